"""The Kafka side of the worker: faust app and transport, handlers, offsets and delivery.

- `worker`: `QAWorker`, the lifecycle and the consume loop that ties the parts below together.
- `app`: the faust app's configuration, its topics, and the commit sensor.
- `transport`: TLS/SASL credentials for faust and aiokafka, and the fetch-wait transport.
- `handlers`: one consumed message to one outgoing record (answer, tags or dead letter).
- `offsets`: ordered acknowledgements, the in-flight limit, offsets that only go forward.
- `delivery`: headers, reply routing, and sending until the broker acknowledges.
- `header_keys`: records whose header keys are not UTF-8 read per record, as dead letters.
- `reachability`: whether the broker answers, and whether the configured topics still exist.
- `watchdog`: partitions with lag whose committed offset has stopped moving.
"""

from .worker import QAWorker

__all__ = ["QAWorker"]
