"""A Kafka-compatible broker started in-process, for the demo, the bench and the tests.

- `broker`: `EmbeddedBroker`, a tansu process on a free port, its topics and its shutdown.
- `local_s3`: `LocalS3`, a moto S3 server the broker can keep its data in.
- `process`: what both need of their child process: a free loopback port, the tail of its
  output for an error message, and stopping its process group.

May import: `worker.errors`, `worker.config`, `worker.lifecycle` and `worker.stream.transport`
(to create topics as the worker would). The production worker (`qa-worker run`) never imports
this package.
"""
