"""The Celery app. Queues: `train` (GPU hosts, one run per worker) and `default` (everything else)."""

import os

from celery import Celery
from kombu import Queue

from rftweb import queues

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rftweb.settings.local")

app = Celery("rftweb")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_queues = (Queue(queues.DEFAULT), Queue(queues.TRAIN))
app.autodiscover_tasks()
