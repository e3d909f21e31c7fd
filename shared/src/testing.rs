//! Helpers for tests that run against the real RabbitMQ and Redis.
