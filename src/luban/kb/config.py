"""The knowledge-base config (torch-free): what `luban kb build` takes as flags or as the `kb:` section of a YAML.

    kb:
      docs: [handbook.pdf, faq/]       # files or folders (.txt .md .html .pdf .jsonl .csv .tsv)
      embedder: starter-e5-small       # a text_embedding run, an HF encoder folder or a starter name
      out: kb/handbook
      chunk_tokens: 256                # the embedder's tokens per chunk (at most)
      overlap_tokens: 32
      text_column: text                # .jsonl / .csv / .tsv
      engine: faiss                    # or pgvector (PostgreSQL server; see docs/knowledge_base.md)
      min_score: 0.80                  # grounded answers: below this retrieval score the documents do not answer
      backend: local                   # or ray: embed the chunks on Ray actors (workers, address)
      workers: 2
      address: local                   # ray: local (start Ray here) or a cluster (auto, ray://head:10001)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from luban.config_base import Section
from luban.errors import ConfigError

ENGINES = ("faiss", "pgvector")


class ChunkingConfig(Section):
    chunk_tokens: int = Field(256, gt=8, le=8192, description="the embedder's tokens per chunk, at most")
    overlap_tokens: int = Field(32, ge=0, description="tokens of whole sentences repeated from the chunk before")

    @model_validator(mode="after")
    def _overlap(self):
        if self.overlap_tokens >= self.chunk_tokens:
            raise ValueError(f"kb.overlap_tokens ({self.overlap_tokens}) must be below kb.chunk_tokens "
                             f"({self.chunk_tokens})")
        return self


class KBConfig(ChunkingConfig):
    docs: list[str] = Field(min_length=1, description="files or folders to index")
    embedder: str = Field(description="a text_embedding run, an HF encoder folder or a starter name")
    out: str = Field(description="the knowledge base folder to write")
    text_column: str = "text"
    engine: Literal["faiss", "pgvector"] = "faiss"
    dsn: str | None = Field(None, description="pgvector: a PostgreSQL URL; default: a local pgserver in KB/pg")
    min_score: float = Field(0.80, ge=-1, le=1, description="grounded answers: the best chunk's cosine below which "
                             "the documents do not answer")
    batch_size: int = Field(32, gt=0, description="texts per embedding batch")
    overwrite: bool = False
    backend: Literal["local", "ray"] = Field("local", description="embed the chunks in this process (local) or on "
                                             "Ray actors (ray: pip install 'luban[distributed]')")
    workers: int = Field(2, gt=0, description="backend ray: embedding actors, each loading the embedder once")
    address: str = Field("local", min_length=1, description="backend ray: local (start Ray here) or a running "
                         "cluster's address (auto, ray://head:10001)")

    @model_validator(mode="after")
    def _ray_installed(self):
        from luban.lifecycle.ray_pool import INSTALL, ray_missing

        if self.backend == "ray" and ray_missing():
            raise ValueError(f"kb.backend ray (--backend ray) needs ray, which is not installed: {INSTALL}")
        return self


def _errors(e: ValidationError, where: str) -> ConfigError:
    lines = []
    for err in e.errors():
        path = ".".join(str(x) for x in ("kb", *err["loc"]))
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(msg if not err["loc"] else f"{path}: {msg}")
    return ConfigError(f"{where}: " + "; ".join(lines))


def kb_config(values: dict, where: str = "luban kb build") -> KBConfig:
    try:
        return KBConfig(**values)
    except ValidationError as e:
        raise _errors(e, where) from None


def load_kb_config(path: str, overrides: dict) -> KBConfig:
    """The `kb:` section of a YAML file (or the whole file when it has no such key), overridden by CLI flags."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a kb: section")
    section = data.get("kb", data)
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: kb: expected a mapping")
    base = Path(path).parent
    values = dict(section)
    for key in ("docs",):  # paths in the file are relative to the file
        if isinstance(values.get(key), list):
            values[key] = [str(base / d) if not Path(d).is_absolute() else d for d in values[key]]
    if isinstance(values.get("out"), str) and not Path(values["out"]).is_absolute():
        values["out"] = str(base / values["out"])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return kb_config(values, path)
