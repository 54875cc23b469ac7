"""``python -m app``: serve on HOST:PORT (default 127.0.0.1:8000)."""

import uvicorn

from app.main import create_app
from app.observability import configure_logging
from app.settings import get_settings

settings = get_settings()
configure_logging(json_logs=settings.log_format == "json")
# Requests are logged by the service's own middleware (with request id, route and model).
uvicorn.run(create_app(settings), host=settings.host, port=settings.port, access_log=False, log_config=None,
            timeout_graceful_shutdown=30)
