"""The Kafka side of the worker: faust app and transport, handlers, offsets and delivery.

- `worker`: `QAWorker`, the lifecycle and the consume loop that ties the parts below together.
- `app`: the faust app's configuration, its topics, and the commit sensor.
- `transport`: TLS/SASL credentials for faust and aiokafka, and the fetch-wait transport.
- `handlers`: one consumed message to one outgoing record (answer, tags or dead letter).
- `offsets`: ordered acknowledgements, the in-flight limit, offsets that only go forward.
- `delivery`: headers, reply routing, and sending until the broker acknowledges.
"""

from .worker import QAWorker

__all__ = ["QAWorker"]
