"""The Kafka side of the worker: faust app and transport, the event pipeline, offsets, delivery.

- `worker`: `QAWorker`, the lifecycle and the consume loop that ties the parts below together.
- `app`: the faust app's configuration, its topics, and the commit sensor.
- `transport`: TLS/SASL credentials and connection options for faust and aiokafka clients.
- `faust_private`: every use of faust's and aiokafka's private API (the fetch-wait transport
  among them), why, and what breaks if it changes.
- `pipeline`: one consumed message to the one record the broker acknowledged for it; the one
  place where whatever is raised on an event's way becomes its dead letter.
- `records`: a consumed message as the worker reads it, its headers, and when it was read.
- `handlers`: one consumed message to one outgoing record (answer, tags or dead letter).
- `outgoing`: the records that answer events, dead letters included, sized to go out.
- `envelope`: the key and headers a record goes out with, and the room they leave its value.
- `offsets`: ordered acknowledgements, the in-flight limit, offsets that only go forward.
- `delivery`: sending until the broker acknowledges, retrying what may pass, and reporting
  what it refuses.
- `reply_routing`: the reply topics events may ask for, and those known to exist.
- `header_keys`: records whose header keys are not UTF-8 read per record, as dead letters.
- `reachability`: whether the broker answers, and whether the configured topics still exist.
- `watchdog`: partitions with lag whose committed offset has stopped moving.
"""

from .worker import QAWorker

__all__ = ["QAWorker"]
