"""The Celery queue names, defined once: the app declares them, the settings route tasks to them,
and workers are started with them (`celery -A rftweb worker -Q train` on GPU hosts)."""

# GPU hosts, one run per worker: training, merged-model builds, readiness sampling (they load models).
TRAIN = "train"
# Everything else.
DEFAULT = "default"
