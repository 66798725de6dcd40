"""An encoder as ONNX (fp32, and int8 with onnxruntime's dynamic quantization), checked by cosine against PyTorch.

`luban export RUN --format onnx` on a text_embedding run (or `export_encoder_onnx(ref, out)` for any encoder folder
or starter, written into a copy at `out`) traces the SentenceEncoder (ids, mask -> unit vectors, pooling inside
the graph) into <encoder folder>/onnx/encoder.onnx, quantizes it into encoder.int8.onnx, and embeds a sample of
texts with all three: the export is refused when a row's cosine to PyTorch is below 0.999 (fp32) or 0.98 (int8);
export.json records the cosines, sizes and texts/s of each. `load_encoder(ref, backend="onnx" | "onnx-int8")` (and
`luban embed --backend`) then runs it on onnxruntime without torch.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from luban.errors import ExportError

FP32_MIN_COSINE = 0.999
INT8_MIN_COSINE = 0.98
PROBES = ["今天天气很好，我们去公园散步吧。", "这台电脑的显卡需要更新驱动程序。", "How do I reset my password?",
          "The delivery was late and the box was damaged.", "退货政策：收到商品七天内可无理由退货。",
          "a", "机器学习是人工智能的一个分支，研究计算机怎样模拟或实现人类的学习行为。" * 3]


def sample_texts(run: Path | None, limit: int = 64) -> list[str]:
    """Texts to check parity on: the run's test (or training) queries and passages, else built-in probes."""
    texts = list(PROBES)
    if run is None:
        return texts
    from luban.compress.export import head_file
    from luban.config import read_yaml, validate
    from luban.tasks.base import read_file
    from luban.tasks.text_embedding import read_pairs

    cfg = validate(read_yaml(run / "config.yaml"), str(run / "config.yaml"))
    for path in (cfg.data.test, cfg.data.train):
        if path is not None and Path(path).is_file():
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                try:
                    pairs, _ = read_pairs(cfg, read_file(cfg, head_file(Path(path), limit // 2, Path(tmp))), False)
                except Exception:  # noqa: BLE001 - the data moved or changed: the probes still check the export
                    continue
            return texts + pairs.queries + pairs.positives
    return texts


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


def _speed(encoder, texts: list[str], rounds: int = 2) -> float:
    encoder.encode(texts[:4], "passage")
    t0 = time.perf_counter()
    for _ in range(rounds):
        encoder.encode(texts, "passage", batch_size=32)
    return round(rounds * len(texts) / (time.perf_counter() - t0), 2)


def export_encoder_onnx(ref, out: str | Path | None = None, quantize: bool = True, quiet: bool = False) -> dict:
    """ONNX (+ int8) export of the encoder `ref` (see the module doc); returns what export.json records."""
    import torch

    from luban.compress.export import _staged, export_onnx
    from luban.compress.quantize import quantize_onnx
    from luban.embedding.encoder import Encoder, OnnxEncoder, Resolved, resolve_ref
    from luban.tasks.base import ExportSpec
    from luban.training.progress import stage

    resolved = resolve_ref(ref)
    if resolved.run is None:
        if out is None:
            raise ExportError(f"{ref}: not a run; give an output folder (the encoder is copied there with its export)")
        out = Path(out)
        if out.exists():
            raise ExportError(f"{out}: already exists")
        shutil.copytree(resolved.folder, out)
        resolved = Resolved(out, resolved.name, resolved.spec)
    folder = resolved.folder
    t0 = time.perf_counter()
    with stage("export encoder onnx", total=4, unit="steps") as st:
        torch_enc = Encoder(resolved, device="cpu")
        texts = sample_texts(resolved.run)
        ids = torch_enc.token_ids(texts, "passage")
        widest = max(range(len(ids)), key=lambda i: len(ids[i]))
        from luban.data.batching import pad_ids

        example = pad_ids([ids[widest], ids[0]], torch_enc.pad_id)
        spec = ExportSpec(["input_ids", "attention_mask"], ["embedding"],
                          {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
                           "embedding": {0: "batch"}})
        st.advance(step="trace")
        with _staged(folder / "onnx") as tmp:
            tmp.mkdir(parents=True)
            exporter = export_onnx(torch_enc.module.float().eval(), spec, example, tmp / "encoder.onnx")
            files = {"onnx": tmp / "encoder.onnx"}
            if quantize:
                st.advance(step="int8")
                quantize_onnx(tmp / "encoder.onnx", tmp / "encoder.int8.onnx", "int8-dynamic")
                files["onnx-int8"] = tmp / "encoder.int8.onnx"
            st.advance(step="parity")
            ref_v = torch_enc.encode(texts, "passage")
            meta = {"format": "onnx", "exporter": exporter, "texts": len(texts), "torch": torch.__version__,
                    "backends": {"torch": {"texts_per_second": _speed(torch_enc, texts),
                                           "size_bytes": sum(p.stat().st_size for p in folder.glob("*.safetensors"))}}}
            staged = Resolved(folder, resolved.name, resolved.spec, resolved.run)
            for backend, path in files.items():
                enc = _onnx_encoder_at(staged, path, backend == "onnx-int8")
                cos = _cosines(ref_v, enc.encode(texts, "passage"))
                need = INT8_MIN_COSINE if enc.quantized else FP32_MIN_COSINE
                meta["backends"][backend] = {"file": f"onnx/{path.name}", "size_bytes": path.stat().st_size,
                                             "min_cosine": round(float(cos.min()), 6),
                                             "mean_cosine": round(float(cos.mean()), 6), "required": need,
                                             "texts_per_second": _speed(enc, texts)}
                if cos.min() < need:
                    raise ExportError(f"the {backend} export of {resolved.name} does not match PyTorch: cosine "
                                      f"{cos.min():.5f} < {need} on {texts[int(cos.argmin())][:60]!r}")
            meta["seconds"] = round(time.perf_counter() - t0, 1)
            (tmp / "export.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
            if (folder / "onnx").exists():
                shutil.rmtree(folder / "onnx")
            tmp.rename(folder / "onnx")
        st.advance()
    if resolved.run is not None:
        import luban.manifest as manifest

        manifest.refresh(resolved.run)
    if not quiet:
        for b, m in meta["backends"].items():
            extra = f", min cosine {m['min_cosine']:.5f}" if "min_cosine" in m else ""
            print(f"{b}: {m['size_bytes'] / 2**20:.1f} MB, {m['texts_per_second']} texts/s{extra}")
        print(f"exported {resolved.name} -> {folder / 'onnx'}")
    return meta


def _onnx_encoder_at(resolved, path: Path, quantized: bool):
    """An OnnxEncoder on the ONNX file `path` (a staged export, before it is moved into place)."""
    from luban.embedding.encoder import OnnxEncoder

    enc = OnnxEncoder.__new__(OnnxEncoder)
    enc.quantized, enc.backend, enc.onnx_path = quantized, ("onnx-int8" if quantized else "onnx"), path
    enc.folder, enc.name, enc.run, enc.spec = resolved.folder, resolved.name, resolved.run, resolved.spec
    enc.device = "cpu"
    enc._fingerprint = None
    enc._load()
    enc.pad_id = int(getattr(enc.tokenizer, "pad_token_id", None) or 0)
    return enc
