"""The Celery side of scripts/bench-broker.sh: one no-op task, configured like kka's task path.

Like kka, tasks are persistent messages on a durable RabbitMQ queue, acknowledged late (after
the task ran), with results in Redis. Environment variables set the broker, the result backend
and the queue, so that the benchmark does not touch other users of the same servers.
"""

import os

from celery import Celery

BROKER_URL = os.environ.get("KKA_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//")
BACKEND_URL = os.environ.get("KKA_CELERY_BACKEND", "redis://127.0.0.1:6379/1")
QUEUE = os.environ.get("KKA_CELERY_QUEUE", "kka-celery-bench")
CONFIRM_PUBLISH = os.environ.get("KKA_CELERY_CONFIRM_PUBLISH", "1") == "1"

app = Celery("kka_celery_bench", broker=BROKER_URL, backend=BACKEND_URL)
app.conf.update(
    task_default_queue=QUEUE,
    task_acks_late=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_expires=600,
    # Wait for RabbitMQ's publisher confirm, as kka does for every publish.
    broker_transport_options={"confirm_publish": CONFIRM_PUBLISH},
    worker_hijack_root_logger=False,
    # Remote control declares the broker-wide exchange celery.pidbox, which the benchmark could
    # not delete without disturbing other Celery apps on the same broker.
    worker_enable_remote_control=False,
)


@app.task(name="kka_bench.noop")
def noop(sent_at):
    """Returns its argument: the time the client sent the task."""
    return sent_at
