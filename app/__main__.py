"""``python -m app``: serve on HOST:PORT (default 127.0.0.1:8000)."""

import os

# Idle OpenMP threads sleep instead of spinning between requests: spinning threads of one request
# starve the event loop and the next request on a few cores (read when torch loads, so set first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import uvicorn  # noqa: E402

from app.main import create_app  # noqa: E402
from app.observability import configure_logging  # noqa: E402
from app.settings import get_settings  # noqa: E402

settings = get_settings()
configure_logging(json_logs=settings.log_format == "json")
# Requests are logged by the service's own middleware (with request id, route and model).
uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False, log_config=None,
            timeout_keep_alive=settings.keep_alive_timeout, timeout_graceful_shutdown=30)
