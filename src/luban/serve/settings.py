"""What `luban serve` is configured with: batching, queue and request limits, API keys, CORS, timeouts.

One pydantic model, filled from the command line (or from the environment in each `--workers` process: JSON) and
read by every other module of the server through the app's state. The defaults suit a CPU box; every limit is a
client-facing 4xx when exceeded.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from luban.errors import LubanError

ENV = "LUBAN_SERVE_SETTINGS"  # how the parent process hands the settings to uvicorn's worker processes


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    runs: list[str] = Field(default_factory=list)
    backend: str = "auto"                 # luban.load backend: auto (ONNX export when there is one), torch, onnx
    device: str = "auto"
    threads: int | None = None            # intra-op threads per forward pass (default: the run's trainer.num_threads)
    replicas: int = 1                     # copies of each model taking predict batches in parallel, one thread each
    # dynamic micro-batching (per model)
    max_batch_size: int = 32              # inputs in one forward pass
    max_wait_ms: float = 5.0              # how long the first request of a batch waits for company
    max_queue: int = 1024                 # inputs waiting per model; more -> 503 + Retry-After
    # generation scheduling (per model): requests that arrive together decode in one batch; batches and single
    # sequences take turns, one token each per turn
    max_active_generations: int = 8
    batch_generations: bool = True        # false: every sequence has its own forward pass (round-robin)
    max_queued_generations: int = 64
    # request limits (each a 4xx with a JSON error body)
    max_body_bytes: int = 16 * 2**20
    max_inputs: int = 256                 # inputs in one /v1/predict request
    max_text_chars: int = 20_000          # one text input, a prompt, or a whole conversation
    max_image_pixels: int = 40_000_000    # width x height of one image
    max_audio_seconds: float = 120.0
    max_tokens: int = 2048                # max_tokens of one completion
    max_n: int = 8                        # completions (or choices) per request
    max_images: int = 64                  # images per generation request
    max_k: int = 1000                     # recommendations per request
    request_timeout: float = 60.0         # seconds; a request still waiting or running then gets 504
    body_timeout: float = 30.0            # seconds to receive the headers, then the body; slower -> 408 / closed
    max_json_depth: int = 64              # nesting of arrays/objects in a JSON body; deeper -> 400
    max_connections: int = 1024           # open connections + requests in flight (uvicorn's limit_concurrency) -> 503
    # security
    api_keys: list[str] = Field(default_factory=list, repr=False)   # bearer keys; none: no auth
    cors_origins: list[str] = Field(default_factory=list)           # none: CORS off
    # the address the server is bound to (`luban serve --host`) and the extra names the Host header may carry:
    # requests for any other host get 421 (DNS rebinding). None (an app built in-process): Host is not checked
    host: str | None = None
    allowed_hosts: list[str] = Field(default_factory=list)
    # PII redaction of JSON requests and responses (luban serve --redact: luban.serve.redaction); [] = off
    redact: list[str] = Field(default_factory=list)
    redact_ner: str | None = None                                   # a token_classification run for person/address
    # what this process reports
    warmup: bool = True
    # grounded chat (`--kb`): a knowledge base every chat completion is answered from (luban.serve.grounded)
    kb: str | None = None
    kb_k: int = 4                         # chunks retrieved per question
    kb_mode: str = "hybrid"               # dense | lexical | hybrid
    kb_min_score: float | None = None     # below this best cosine: "the documents do not answer" (default: the KB's)

    def to_env(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_env(cls) -> "ServeSettings":
        raw = os.environ.get(ENV)
        if not raw:
            raise LubanError(f"{ENV} is not set: start the server with `luban serve RUN`")
        return cls.model_validate_json(raw)

    def check(self) -> "ServeSettings":
        """Every limit in range, as one LubanError naming the command-line flags (before anything loads)."""
        positive = ["replicas", "max_batch_size", "max_queue", "max_active_generations", "max_queued_generations",
                    "max_body_bytes", "max_inputs", "max_text_chars", "max_image_pixels", "max_audio_seconds",
                    "max_tokens", "max_n", "max_images", "max_k", "request_timeout", "body_timeout", "max_json_depth",
                    "max_connections"]
        values = self.model_dump(include=set(positive))
        bad = [f"--{n.replace('_', '-')} must be > 0 (got {values[n]})" for n in positive if not values[n] > 0]
        if self.threads is not None and self.threads < 1:
            bad.append(f"--threads must be >= 1 (got {self.threads})")
        if self.max_wait_ms < 0:
            bad.append(f"--max-wait-ms must be >= 0 (got {self.max_wait_ms})")
        if self.kb_k < 1:
            bad.append(f"--kb-k must be >= 1 (got {self.kb_k})")
        if bad:
            raise LubanError("; ".join(bad))
        return self


KEYS_ENV = "LUBAN_API_KEYS"  # API keys from the environment (comma- or newline-separated): not visible in `ps`


def read_api_keys(path: str | Path) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise LubanError(f"--api-keys-file {path}: {e.strerror or e}") from None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not keys:
        raise LubanError(f"--api-keys-file {path}: no keys in the file")
    return keys


def env_api_keys(environ=None) -> list[str]:
    """The keys in $LUBAN_API_KEYS, split on commas and newlines (blank entries skipped); [] when unset."""
    raw = (os.environ if environ is None else environ).get(KEYS_ENV)
    if raw is None:
        return []
    keys = [k.strip() for k in raw.replace("\n", ",").split(",") if k.strip()]
    if not keys:
        raise LubanError(f"{KEYS_ENV} is set but holds no keys (separate keys with commas or newlines)")
    return keys
