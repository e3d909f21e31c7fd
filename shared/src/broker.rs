//! RabbitMQ topology, publishing with confirms and consuming with manual acks.
