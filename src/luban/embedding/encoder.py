"""The text encoder API: one place that turns texts into unit vectors, for every user of embeddings in luban
(the text_embedding task's predictor, `luban embed`, `POST /v1/embeddings`, the knowledge base).

Contract (stable; callers rely on it):

    enc = load_encoder(ref, device="cpu", backend="torch", max_length=None)
        ref: a text_embedding run directory (its model/encoder/ folder and the settings in model/processor.json),
             a Hugging Face encoder folder (config.json + weights + tokenizer), or a starter name
             (starter-e5-small, starter-minilm; resolved offline through luban.hub.catalog).
        backend: "torch"; "onnx" (the run's / folder's ONNX export, onnxruntime, no torch); "auto" (onnx when an
             export is there, else torch).
        Errors are luban.errors.LubanError subclasses with one clear message (ConfigError for a ref that is no
        encoder, RunError for a damaged run).
    enc.encode(texts, kind="query" | "passage", batch_size=32, progress=False) -> np.ndarray
        float32, shape (len(texts), enc.dim), each row L2-normalized (so a dot product is the cosine), row i for
        texts[i]. `kind` picks the model's own prefix (e5: "query: " / "passage: "; none for most models): callers
        never add prefixes themselves. Texts longer than enc.max_length tokens are truncated. An empty list gives
        an array of shape (0, dim). progress=True shows a bar / log lines with an ETA (luban.training.progress).
    enc.count_tokens(texts, kind="query") -> list[int]   tokens each text becomes (prefix and specials included,
        after truncation): the usage figures of /v1/embeddings.
    enc.dim: int, enc.name: str (the starter name, folder or run name), enc.max_length: int
    enc.spec: EmbeddingSpec (pooling "mean" | "cls", normalize, query_prefix, passage_prefix, max_length,
        family, source: where those settings came from)
    enc.fingerprint: str   "sha256:<hex>" over the exact weight files' bytes and the spec (pooling, normalize,
        prefixes, max_length): two encoders with equal fingerprints give the same vectors; a knowledge base stores
        it and refuses an encoder with another one. Computed once (hashing the weights reads them: about a second
        for e5-small), taken from the run's manifest.json when it lists the weights' sha256.
    enc.info() -> dict   name, dim, fingerprint and the spec, JSON-ready (what a knowledge base records).

Where pooling and prefixes come from (never the user), first match wins:
    1. luban's own metadata: a text_embedding run's processor.json part "embedding" (the folder of a run export
       carries the same as sentence-transformers files, below);
    2. sentence-transformers files in the folder: modules.json + <pooling>/config.json (mean / cls),
       a Normalize module, config_sentence_transformers.json "prompts" {"query", "passage"}, and
       sentence_bert_config.json max_seq_length;
    3. known model families by the catalog entry, luban_import.json or the config's name: e5 (mean,
       "query: " / "passage: "), bge (cls), MiniLM / mpnet sentence encoders (mean, no prefixes);
    4. otherwise mean pooling, no prefixes. Vectors are always L2-normalized.

Torch-free at import; torch/transformers (or onnxruntime) load in load_encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from luban.errors import ConfigError, LubanError, RunError

KINDS = ("query", "passage")
SPEC_PART = "embedding"  # the processor.json part of a text_embedding run
ENCODER_DIR = "encoder"  # a text_embedding run's HF encoder folder, under model/
ONNX_FILE = "encoder.onnx"  # an encoder's ONNX export, in <folder>/onnx/ (int8: encoder.int8.onnx)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
DEFAULT_MAX_LENGTH = 512


@dataclass(frozen=True)
class EmbeddingSpec:
    pooling: str = "mean"  # "mean" | "cls"
    normalize: bool = True
    query_prefix: str = ""
    passage_prefix: str = ""
    max_length: int = DEFAULT_MAX_LENGTH
    family: str = "generic"
    source: str = "default"  # where pooling / prefixes came from: run, sentence-transformers, family, default

    def prefix(self, kind: str) -> str:
        if kind not in KINDS:
            raise ConfigError(f"kind {kind!r}: choose one of {', '.join(KINDS)}")
        return self.query_prefix if kind == "query" else self.passage_prefix

    def identity(self) -> dict:
        """What changes the vectors (the fingerprint's part besides the weights)."""
        return {"pooling": self.pooling, "normalize": self.normalize, "query_prefix": self.query_prefix,
                "passage_prefix": self.passage_prefix, "max_length": self.max_length}

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> "EmbeddingSpec":
        known = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        return cls(**known)


# ------------------------------------------------------------------------------------------ finding the settings

FAMILIES = {
    # family: (pooling, query prefix, passage prefix)
    "e5": ("mean", "query: ", "passage: "),
    "bge": ("cls", "", ""),
    "sentence-transformers": ("mean", "", ""),
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def family_of(folder: Path, hint: str = "") -> str | None:
    """The known model family of an encoder folder (catalog name, luban_import.json, config name), else None."""
    words = [hint, folder.name]
    prov = _read_json(folder / "luban_import.json")
    if isinstance(prov, dict):
        words += [str(prov.get("catalog", "")), str(prov.get("source", "")), str(prov.get("usage", ""))]
    cfg = _read_json(folder / "config.json")
    if isinstance(cfg, dict):
        words.append(str(cfg.get("_name_or_path", "")))
    text = " ".join(words).lower()
    if "e5" in text.replace("-", " ").split() or "e5-" in text or "multilingual-e5" in text or "'query: '" in text:
        return "e5"
    if "bge" in text:
        return "bge"
    if any(k in text for k in ("minilm", "mpnet", "sentence-transformers", "paraphrase-")):
        return "sentence-transformers"
    return None


def sentence_transformers_spec(folder: Path) -> dict | None:
    """Pooling, normalization, prompts and max length from a sentence-transformers folder's files, else None."""
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        return None
    out: dict = {"normalize": False}
    for m in modules:
        if not isinstance(m, dict):
            continue
        kind = str(m.get("type", ""))
        if kind.endswith("Pooling"):
            pc = _read_json(folder / str(m.get("path", "")) / "config.json") or {}
            if pc.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif pc.get("pooling_mode_mean_tokens", True):
                out["pooling"] = "mean"
            else:
                modes = [k for k, v in pc.items() if k.startswith("pooling_mode") and v]
                raise ConfigError(f"{folder}: sentence-transformers pooling {', '.join(modes) or '?'} is not "
                                  "supported (luban pools mean or cls)")
        elif kind.endswith("Normalize"):
            out["normalize"] = True
    st = _read_json(folder / "config_sentence_transformers.json")
    prompts = st.get("prompts") if isinstance(st, dict) else None
    if isinstance(prompts, dict):
        out["query_prefix"] = str(prompts.get("query", "") or "")
        out["passage_prefix"] = str(prompts.get("passage", prompts.get("document", "")) or "")
    sb = _read_json(folder / "sentence_bert_config.json")
    if isinstance(sb, dict) and isinstance(sb.get("max_seq_length"), int):
        out["max_length"] = sb["max_seq_length"]
    return out


def model_max_length(folder: Path) -> int:
    """The longest input the encoder takes: its position table (less RoBERTa's padding offset), at most 512."""
    cfg = _read_json(folder / "config.json") or {}
    n = int(cfg.get("max_position_embeddings") or DEFAULT_MAX_LENGTH)
    if cfg.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
        n -= 2
    return max(8, min(n, DEFAULT_MAX_LENGTH))


def detect_spec(folder: Path, hint: str = "") -> EmbeddingSpec:
    """The pooling, prefixes and max length of an HF encoder folder (module doc: 2-4)."""
    folder = Path(folder)
    limit = model_max_length(folder)
    st = sentence_transformers_spec(folder)
    fam = family_of(folder, hint)
    pooling, qp, pp = FAMILIES.get(fam or "", ("mean", "", ""))
    if st is not None:
        has_prompts = "query_prefix" in st
        return EmbeddingSpec(pooling=st.get("pooling", pooling), normalize=True,
                             query_prefix=st["query_prefix"] if has_prompts else qp,
                             passage_prefix=st["passage_prefix"] if has_prompts else pp,
                             max_length=min(st.get("max_length", limit), limit), family=fam or "generic",
                             source="sentence-transformers")
    if fam is not None:
        return EmbeddingSpec(pooling, True, qp, pp, limit, fam, "family")
    return EmbeddingSpec(max_length=limit)


# ------------------------------------------------------------------------------------------ resolving a ref


@dataclass
class Resolved:
    folder: Path  # the HF encoder folder
    name: str
    spec: EmbeddingSpec
    run: Path | None = None  # the run directory, for a text_embedding run


def _run_spec(run: Path) -> EmbeddingSpec:
    from luban.processor import FILE, load

    saved = load(run / "model")
    task = _read_json(run / "model" / FILE) or {}
    if task.get("task") not in (None, "text_embedding"):
        raise ConfigError(f"{run}: a run of task {task.get('task')}; embeddings come from a text_embedding run, an "
                          "encoder folder or a starter name (starter-e5-small, starter-minilm)")
    return EmbeddingSpec.from_state(saved[SPEC_PART])


def resolve_ref(ref: str | os.PathLike) -> Resolved:
    """A run directory, an HF encoder folder or a starter name -> its encoder folder, name and settings."""
    from luban.hub import catalog

    text = str(ref)
    local = catalog.resolve(text, "embedder") if text in catalog.CATALOG else None
    if local is not None:
        folder = Path(local)
        return Resolved(folder, text, detect_spec(folder, text))
    path = Path(text).expanduser()
    if not path.exists():
        raise ConfigError(f"{text}: no such run, encoder folder or starter model (starters: "
                          f"{', '.join(n for n, e in catalog.CATALOG.items() if 'embeddings' in e.task or e.module)})")
    if not path.is_dir():
        raise ConfigError(f"{text}: a file; expected a text_embedding run, an encoder folder (config.json, "
                          "weights, tokenizer) or a starter name")
    if (path / "model" / "processor.json").is_file() or (path / "manifest.json").is_file():
        from luban.rundir import check_finished

        run = check_finished(path)
        spec = _run_spec(run)
        folder = run / "model" / ENCODER_DIR
        if not (folder / "config.json").is_file():
            raise RunError(f"{folder}: the run's encoder folder is missing (config.json); the run is damaged")
        return Resolved(folder, run.name, spec, run)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{text}: not an encoder folder (no config.json) nor a luban run (no manifest.json)")
    return Resolved(path, path.name, detect_spec(path))


def weight_files(folder: Path) -> list[Path]:
    found = [folder / f for f in WEIGHT_FILES if (folder / f).is_file()]
    found += sorted(p for p in folder.glob("model-*.safetensors"))  # sharded
    if not found:
        raise ConfigError(f"{folder}: no encoder weights ({' or '.join(WEIGHT_FILES)})")
    return found[:1] if found[0].name in WEIGHT_FILES else found


def fingerprint_of(folder: Path, spec: EmbeddingSpec, run: Path | None = None) -> str:
    """sha256 over the weight files' sha256 (the run manifest's when it has them) and the spec's identity."""
    known = {}
    if run is not None:
        man = _read_json(run / "manifest.json") or {}
        known = {f["path"]: f.get("sha256") for f in man.get("files", []) if isinstance(f, dict)}
    parts = []
    for p in weight_files(folder):
        digest = known.get(p.relative_to(run).as_posix()) if run is not None else None
        if not digest:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            digest = h.hexdigest()
        parts.append(digest)
    doc = json.dumps({"weights": parts, **spec.identity()}, sort_keys=True, ensure_ascii=False)
    return "sha256:" + hashlib.sha256(doc.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------ the encoder


class Encoder:
    """Texts -> L2-normalized float32 vectors (see the module doc). Built by load_encoder (or `wrap`, around a
    module being trained)."""

    backend = "torch"

    def __init__(self, resolved: Resolved, device: str = "cpu", max_length: int | None = None):
        self.folder, self.name, self.run = resolved.folder, resolved.name, resolved.run
        spec = resolved.spec
        if max_length is not None:
            if max_length <= 0:
                raise ConfigError(f"max_length {max_length}: must be > 0")
            spec = replace(spec, max_length=min(max_length, model_max_length(self.folder)))
        self.spec: EmbeddingSpec = spec
        self._fingerprint: str | None = None
        self.device = device
        self._load()
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0)

    @classmethod
    def wrap(cls, module, tokenizer, spec: EmbeddingSpec, name: str = "model") -> "Encoder":
        """An Encoder around a SentenceEncoder module in memory (the text_embedding task evaluates with it);
        it has no fingerprint (no weight files)."""
        self = cls.__new__(cls)
        self.folder, self.name, self.run, self.spec, self.device = None, name, None, spec, "module"
        self.module, self.tokenizer, self._fingerprint = module, tokenizer, "unsaved"
        self.torch_device = next(module.parameters()).device
        self.dim = int(module.dim)
        self.pad_id = int(getattr(tokenizer, "pad_token_id", None) or 0)
        return self

    # the backend's part ---------------------------------------------------------------------------
    def _load(self) -> None:
        from luban.models.sentence_encoder import SentenceEncoder, load_tokenizer
        from luban.training.hardware import select_device

        self.torch_device = select_device(self.device)
        self.tokenizer = load_tokenizer(self.folder)
        self.module = SentenceEncoder.from_folder(self.folder, self.spec.pooling, self.spec.normalize)
        self.module.to(self.torch_device).eval()
        self.dim = int(self.module.dim)

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        import torch

        from luban.data.batching import pad_ids

        ids, mask = pad_ids(seqs, self.pad_id)
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.inference_mode():
                out = self.module(ids.to(self.torch_device), mask.to(self.torch_device))
        finally:
            self.module.train(was_training)
        return out.float().cpu().numpy()

    # shared ---------------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self.spec.max_length

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self.folder, self.spec, self.run)
        return self._fingerprint

    def info(self) -> dict:
        return {"name": self.name, "dim": self.dim, "fingerprint": self.fingerprint, "backend": self.backend,
                **self.spec.state()}

    def _texts(self, texts: Sequence[str], kind: str) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode takes a list of texts, not one string")
        prefix = self.spec.prefix(kind)
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise LubanError(f"text {i}: expected a string, got {type(t).__name__}")
            out.append(prefix + t)
        return out

    def token_ids(self, texts: Sequence[str], kind: str = "query") -> list[list[int]]:
        """Each text's token ids: the kind's prefix, the model's special tokens, truncated to max_length."""
        texts = self._texts(texts, kind)
        if not texts:
            return []
        return [list(x) for x in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]

    def count_tokens(self, texts: Sequence[str], kind: str = "query") -> list[int]:
        return [len(x) for x in self.token_ids(texts, kind)]

    def encode(self, texts: Sequence[str], kind: str = "query", batch_size: int = 32,
               progress: bool = False) -> np.ndarray:
        return self.encode_ids(self.token_ids(texts, kind), batch_size, progress)

    def encode_ids(self, ids: list[list[int]], batch_size: int = 32, progress: bool = False) -> np.ndarray:
        """Vectors for texts already tokenized by token_ids (the task tokenizes its splits once)."""
        from luban.data.batching import inference_batches

        if batch_size <= 0:
            raise ConfigError(f"batch_size {batch_size}: must be > 0")
        out = np.empty((len(ids), self.dim), np.float32)
        if not ids:
            return out
        batches = inference_batches([len(x) for x in ids], batch_size)  # similar lengths together: little padding
        if progress:
            from luban.training.progress import track

            batches = track(batches, f"embedding {len(ids)} texts", unit="batches", delay=1.0)
        for idx in batches:
            out[idx] = self._forward([ids[i] for i in idx])
        # normalized again in float32: vectors from a half-precision or ONNX model are unit length exactly
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def __repr__(self) -> str:
        return (f"Encoder({self.name!r}, dim={self.dim}, pooling={self.spec.pooling}, backend={self.backend}, "
                f"prefixes={self.spec.query_prefix!r}/{self.spec.passage_prefix!r})")


def onnx_file(folder: Path, quantized: bool = False) -> Path:
    """Where an encoder folder's ONNX export lives (written by luban.embedding.export)."""
    return folder / "onnx" / (ONNX_FILE.replace(".onnx", ".int8.onnx") if quantized else ONNX_FILE)


def load_encoder(ref: str | os.PathLike, device: str = "cpu", backend: str = "torch",
                 max_length: int | None = None) -> Encoder:
    """The encoder `ref` names (a text_embedding run, an HF encoder folder, a starter name): see the module doc."""
    if backend not in ("torch", "onnx", "onnx-int8", "auto"):
        raise ConfigError(f"backend {backend!r}: choose torch, onnx, onnx-int8 or auto")
    resolved = resolve_ref(ref)
    if backend == "auto":
        backend = "onnx" if onnx_file(resolved.folder).is_file() else "torch"
    if backend.startswith("onnx"):
        return OnnxEncoder(resolved, quantized=backend == "onnx-int8", max_length=max_length)
    return Encoder(resolved, device=device, max_length=max_length)


def worker_ref(encoder, ref: str | os.PathLike | None = None) -> str:
    """What another process (a Ray worker) loads to get `encoder` again: the run or folder it was resolved to
    (absolute), a starter name as it is (the catalog resolves it alike everywhere)."""
    from luban.hub import catalog

    if ref is not None and str(ref) in catalog.CATALOG:
        return str(ref)
    where = getattr(encoder, "run", None) or getattr(encoder, "folder", None)
    if where is None:
        if ref is None:
            raise ConfigError("--backend ray: the embedder has no folder or run for the Ray workers to load")
        return str(ref)
    return str(Path(where).resolve())


def check_same(encoder, fingerprint: str, ref: str) -> None:
    """A Ray worker's encoder is the driver's (same fingerprint), or a ConfigError: the files differ there."""
    if encoder.fingerprint != fingerprint:
        raise ConfigError(f"--backend ray: a Ray worker loaded {ref} as another embedder ({encoder.fingerprint[:19]}…"
                          f", not {fingerprint[:19]}…); give the workers the same files (a shared path)")


# ------------------------------------------------------------------------------------------ onnxruntime

class _Tokenizer:
    """tokenizers.Tokenizer behind the call the Encoder makes (truncated ids; the encoder pads)."""

    def __init__(self, path, pad_id: int):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(path))
        self.tok.no_padding()
        self.pad_token_id = pad_id

    def __call__(self, texts, truncation=True, max_length=512):
        self.tok.enable_truncation(max_length)
        return {"input_ids": [e.ids for e in self.tok.encode_batch(texts)]}


class OnnxEncoder(Encoder):
    def __init__(self, resolved: Resolved, quantized: bool = False, max_length: int | None = None):
        self.quantized = quantized
        self.backend = "onnx-int8" if quantized else "onnx"
        super().__init__(resolved, device="cpu", max_length=max_length)

    def _load(self) -> None:
        import json

        path = getattr(self, "onnx_path", None) or onnx_file(self.folder, self.quantized)
        if not path.is_file():
            raise ConfigError(f"{path}: no ONNX export of this encoder; write one with `luban export "
                              f"{self.run or self.folder} --format onnx`")
        tj = self.folder / "tokenizer.json"
        if not tj.is_file():
            raise ConfigError(f"{self.folder}: the ONNX backend needs tokenizer.json (a fast tokenizer)")
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        cfg = json.loads((self.folder / "config.json").read_text(encoding="utf-8"))
        self.tokenizer = _Tokenizer(tj, int(cfg.get("pad_token_id") or 0))
        self.dim = int(self.session.get_outputs()[0].shape[-1] if isinstance(
            self.session.get_outputs()[0].shape[-1], int) else cfg["hidden_size"])
        self.spec = replace(self.spec, max_length=min(self.spec.max_length, model_max_length(self.folder)))
        self._inputs = [i.name for i in self.session.get_inputs()]

    def _forward(self, seqs: list[list[int]]) -> np.ndarray:
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.pad_id, np.int64)
        mask = np.zeros((len(seqs), width), np.int64)
        for row, s in enumerate(seqs):
            ids[row, :len(s)], mask[row, :len(s)] = s, 1
        feed = {"input_ids": ids, "attention_mask": mask}
        return self.session.run(None, {k: feed[k] for k in self._inputs})[0].astype(np.float32)

    @property
    def fingerprint(self) -> str:
        """fp32 ONNX: the weights' fingerprint (its vectors match torch's to cosine >= 0.999, checked at export);
        int8: another one (quantized weights give other vectors), so a knowledge base tells them apart."""
        base = super().fingerprint
        return base + "+int8" if self.quantized else base
