"""Deletes what the Celery benchmark left on the servers: its queue, the exchange that Celery
named after it, and the result keys."""

import redis
from kombu import Connection

from tasks import BACKEND_URL, BROKER_URL, QUEUE


def main():
    with Connection(BROKER_URL) as connection:
        channel = connection.channel()
        channel.queue_delete(QUEUE)
        channel.exchange_delete(QUEUE)
    client = redis.Redis.from_url(BACKEND_URL)
    keys = list(client.scan_iter("celery-task-meta-*", count=1000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


if __name__ == "__main__":
    main()
