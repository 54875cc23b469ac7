"""``python -m app [--flag value ...]``: serve on HOST:PORT (default 127.0.0.1:8000); ``--help`` lists the flags."""

import sys

from app.cli import serve

serve(sys.argv[1:])
