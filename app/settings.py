"""Service configuration, read from the environment (or a ``.env`` file) by pydantic-settings."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    checkpoint_dir: Path = Field(Path("checkpoints"), description="Root holding checkpoints/<id>/ directories.")
    host: str = Field("127.0.0.1", description="Address uvicorn binds to.")
    port: int = Field(8000, ge=1, le=65535, description="Port uvicorn listens on.")
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:\d+)?)$", description="Where models run: cpu or cuda.")
    api_key: str | None = Field(None, description="When set, every /v1 route needs 'Authorization: Bearer <key>'.")
    max_text_length: int = Field(2000, ge=1, description="Longest text (characters) one input may have.")
    max_batch_texts: int = Field(32, ge=1, description="Most texts one request may carry.")
    max_new_tokens: int = Field(512, ge=1, description="Cap on tokens one generation may produce.")
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's own).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (JSON list).")
    request_timeout: float = Field(60.0, gt=0, description="Seconds before an inference request gets 504.")
    max_concurrent_inferences: int = Field(4, ge=1, description="Inferences running at once.")
    max_queued_inferences: int = Field(16, ge=0, description="Inferences waiting for a slot before 429.")
    max_batch_size: int = Field(32, ge=1, description="Most fill-mask or classify requests answered together by "
                                "one batched forward pass (1 turns dynamic batching off).")
    batch_wait_ms: float = Field(5.0, ge=0, description="Longest a fill-mask or classify request waits for others "
                                 "to share its forward pass (milliseconds).")
    keep_alive_timeout: float = Field(75.0, gt=0, description="Seconds an idle keep-alive connection stays open. "
                                      "Longer than clients' and load balancers' own idle timeouts, so that they, "
                                      "not the service, close idle connections: a request sent just as the "
                                      "server closes one fails without an answer.")
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects or plain text.")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body accepted (413 above).")
    max_header_bytes: int = Field(65_536, ge=1024, description="Largest request head (request line and headers) "
                                  "accepted; 431 above.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds a client has to send a whole request, counted from "
                                "its first byte (from the connection's opening for its first one); past it the "
                                "connection is closed.")
    max_connections: int = Field(1000, ge=1, description="Open connections one server process keeps; the request of "
                                 "a connection past it gets 429 with Retry-After.")


@lru_cache
def get_settings() -> Settings:
    return Settings()
