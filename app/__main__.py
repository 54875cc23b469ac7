"""``python -m app``: serve on HOST:PORT (default 127.0.0.1:8000)."""

import logging

import uvicorn

from app.main import create_app
from app.settings import get_settings

settings = get_settings()
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
uvicorn.run(create_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=30)
