"""The command line. ``python -m app`` and ``lineage serve`` start the service; every setting is also a flag
(``--port 9000`` for ``PORT=9000``), and a flag wins over the environment. ``lineage train ...`` is
``python -m training ...``, run as its own process: the service never imports the trainers."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from app.settings import Settings, use_settings


def parse_settings(argv: list[str], prog: str) -> Settings:
    """Settings from the environment, overridden by flags; a bad flag or value exits with argparse's status 2."""
    try:
        return Settings(_cli_parse_args=argv, _cli_kebab_case=True, _cli_prog_name=prog)
    except ValidationError as error:
        problems = "; ".join(_describe(problem) for problem in error.errors())
        print(f"{prog}: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None


def _describe(problem: ErrorDetails) -> str:
    field = "_".join(str(part) for part in problem["loc"])
    return f"--{field.replace('_', '-')} (or {field.upper()}): {problem['msg']} (got {problem['input']!r})"


def serve(argv: list[str], prog: str = "python -m app") -> None:
    # Idle OpenMP threads sleep instead of spinning between requests: spinning threads of one request
    # starve the event loop and the next request on a few cores. Read when torch loads, so set before
    # the imports below load it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings = parse_settings(argv, prog)
    use_settings(settings)  # before app.main, below, builds the request schemas from them

    import functools

    import uvicorn

    from app.connections import ConnectionLimits, GuardedH11Protocol
    from app.main import create_app
    from app.observability import configure_logging

    configure_logging(json_logs=settings.log_format == "json")
    protocol = functools.partial(GuardedH11Protocol, limits=ConnectionLimits.from_settings(settings))
    # Requests are logged by the service's own middleware (with request id, route and model). No route is a
    # WebSocket, so an upgrade request is answered as plain HTTP rather than handed to a WebSocket protocol.
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, http=protocol,  # type: ignore[arg-type]
                ws="none", access_log=False, log_config=None, timeout_keep_alive=settings.keep_alive_timeout,
                timeout_graceful_shutdown=30)


def main(argv: list[str] | None = None) -> None:
    """``lineage``: the console script installed with the package."""
    parser = argparse.ArgumentParser(
        prog="lineage", description="Train and serve the classic lineage of neural language models.",
        epilog="`lineage serve --help` lists the service's settings; `lineage train --help` the trainers.")
    parser.add_argument("command", choices=["serve", "train"],
                        help="serve: start the service (as python -m app); train: run python -m training")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the command")
    options = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if options.command == "serve":
        serve(options.args, prog="lineage serve")
    else:
        os.execv(sys.executable, [sys.executable, "-m", "training", *options.args])
