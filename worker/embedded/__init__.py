"""A Kafka-compatible broker started in-process, for the demo, the bench and the tests.

- `broker`: `EmbeddedBroker`, a tansu process on a free port, its topics and its shutdown.
- `local_s3`: `LocalS3`, a moto S3 server the broker can keep its data in.
- `process`: what both start their child process with: free ports, process groups, log tails
  and `BrokerError`'s use on a child that does not come up.

May import: `worker.errors`, `worker.config`, `worker.lifecycle` and `worker.stream.transport`
(to create topics as the worker would). The production worker (`qa-worker run`) never imports
this package.
"""
