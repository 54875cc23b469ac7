"""Service configuration, read from the environment (or a ``.env`` file) by pydantic-settings.

The request limits (the ``max_*`` fields) shape the request schemas themselves, so /docs and the
OpenAPI document state the limits the service enforces. Those schemas are built once per process, when
``app.main`` is first imported, from ``get_settings()``: the environment's settings, or the command line's,
which ``app.cli`` installs with ``use_settings`` first; a ``Settings`` passed to ``create_app`` changes
everything else, not them.
"""

from __future__ import annotations

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
    torch_threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's own).")
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed by CORS (JSON list).")
    request_timeout: float = Field(60.0, gt=0, description="Seconds before an inference request gets 504, and a "
                                   "stream ends with an error event.")
    max_concurrent_inferences: int = Field(4, ge=1, description="Inferences running at once.")
    max_queued_inferences: int = Field(16, ge=0, description="Inferences waiting for a slot before 429.")
    max_batch_size: int = Field(32, ge=1, description="Most fill-mask, classify or embeddings requests answered "
                                "together by one batched forward pass (1 turns dynamic batching off).")
    batch_wait_ms: float = Field(5.0, ge=0, description="Longest a fill-mask, classify or embeddings request waits "
                                 "for others to share its forward pass (milliseconds).")
    keep_alive_timeout: float = Field(75.0, gt=0, description="Seconds an idle keep-alive connection stays open. "
                                      "Longer than clients' and load balancers' own idle timeouts, so that they, "
                                      "not the service, close idle connections: a request sent just as the "
                                      "server closes one fails without an answer.")
    log_format: Literal["json", "text"] = Field("json", description="Log lines as JSON objects or plain text.")

    # ---- connections (app.connections) -------------------------------------------------------------
    max_header_bytes: int = Field(65_536, ge=1024, description="Largest request head (request line and headers) "
                                  "accepted; 431 above.")
    read_timeout: float = Field(10.0, gt=0, description="Seconds a client has to send a whole request, counted from "
                                "its first byte (from the connection's opening for its first one); past it the "
                                "connection is closed.")
    max_connections: int = Field(1000, ge=1, description="Open connections one server process keeps; the request of "
                                 "a connection past it gets 429 with Retry-After.")

    # ---- what one request may ask for --------------------------------------------------------------
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body accepted (413 above).")
    max_response_bytes: int = Field(4_000_000, ge=1, description="Largest reply a request may need in its worst "
                                    "case (422 before any inference above); streamed replies end at "
                                    "REQUEST_TIMEOUT instead.")
    max_text_length: int = Field(2000, ge=1, description="Longest prompt, chat message, text to embed, fill-mask "
                                 "text or next-sentence sentence (characters).")
    max_prompt_tokens: int = Field(2048, ge=1, description="Most token ids in one prompt or input given as ids "
                                   "(completions, embeddings, detokenize).")
    max_new_tokens: int = Field(512, ge=1, description="Most tokens one generated sample may have (a chat reply's "
                                "default).")
    max_samples: int = Field(8, ge=1, description="Most samples (n) one generation request may ask for.")
    max_prompts: int = Field(8, ge=1, description="Most prompts one /v1/completions request may carry.")
    max_messages: int = Field(32, ge=1, description="Most messages one /v1/chat/completions request may carry.")
    max_embedding_inputs: int = Field(64, ge=1, description="Most inputs one /v1/embeddings request may carry.")
    max_stop_sequences: int = Field(4, ge=1, description="Most stop sequences of one generation request.")
    max_stop_length: int = Field(64, ge=1, description="Longest stop sequence (characters).")
    max_translate_texts: int = Field(32, ge=1, description="Most texts one /v1/translate request may carry.")
    # The models learnt from sentences of at most ~18 characters; far longer input only yields noise.
    max_translate_text_length: int = Field(200, ge=1, description="Longest text to translate (characters).")
    max_translation_length: int = Field(100, ge=1, description="Most tokens one translation may have (the cap "
                                        "of max_length and of its default).")
    max_beam_size: int = Field(10, ge=1, description="Widest beam a translation may ask for.")
    max_classify_texts: int = Field(64, ge=1, description="Most texts one /v1/classify request may carry.")
    max_classify_text_length: int = Field(5000, ge=1, description="Longest text to classify (characters).")
    max_top_k: int = Field(50, ge=1, description="Most predictions per [MASK] (fill-mask top_k).")
    max_targets: int = Field(50, ge=1, description="Most fill-mask targets one request may name.")
    max_word_length: int = Field(64, ge=1, description="Longest word (word2vec words, fill-mask targets).")
    max_query_words: int = Field(20, ge=1, description="Most words in each list of a word2vec request "
                                 "(most-similar's positive and negative, n-similarity's, doesnt-match's, "
                                 "vectors').")
    max_topn: int = Field(100, ge=1, description="Most neighbours one most-similar request may ask for.")


class _Current:
    settings: Settings | None = None


def get_settings() -> Settings:
    """The settings this process runs with: the environment's, or those given to ``use_settings``."""
    if _Current.settings is None:
        _Current.settings = Settings()
    return _Current.settings


def use_settings(settings: Settings) -> None:
    """Run this process with ``settings`` (the command line's): call it before anything imports ``app.main``,
    which builds the request schemas from them."""
    _Current.settings = settings
