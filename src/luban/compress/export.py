"""`luban export RUN --format onnx|torchscript`: the run's model as a standalone graph, checked against PyTorch.

ONNX uses PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`): in torch 2.13 it exports
every luban model tried in a second or two as one self-contained file that onnxruntime's quantizer accepts. The
dynamo exporter (the default of `torch.onnx.export` since torch 2.9, needs onnxscript) is the fallback when the
TorchScript-based one fails; its graphs carry shape annotations the int8 quantizer rejects, so they are cleaned.
TorchScript uses `torch.jit.trace`. Both are traced, so the example batch has padding (rows of mixed length) and
the parity check runs several real validation batches of other shapes: max |Δ| of the outputs is printed and
stored in export.json. HF-backbone runs also get model/hf/ in `save_pretrained` layout.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
import warnings
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from luban.compress import EXPORT_META, HF_DIR, ONNX_DIR, ONNX_FILE, TORCHSCRIPT_DIR
from luban.errors import ExportError
from luban.rundir import check_finished
from luban.tasks.base import OutputTuple

DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-3  # max |Δ| allowed between an fp32 export and PyTorch (relative to the output scale)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


@contextlib.contextmanager
def _quiet():
    out = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        warnings.simplefilter("ignore")
        yield


def example_batch(batches: list[tuple]) -> tuple:
    """The batch to trace with: the widest (largest rows: most tokens, frames), so sequence padding is inside the
    traced graph; then the largest."""
    return max(batches, key=lambda b: (b[0][0].numel() if b[0].ndim > 1 else 0, b[0].shape[0]))


def _outputs(out) -> list[torch.Tensor]:
    """A model's outputs as a list: one tensor, a tuple, or a dict (in its order)."""
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def export_onnx(module: nn.Module, spec, example: tuple, path: Path, opset: int = DEFAULT_OPSET,
                dynamic: bool = True) -> str:
    """Write `module` as a single-file ONNX model; returns which exporter made it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    axes = {k: v for k, v in spec.dynamic_axes.items()} if dynamic else None
    names = dict(input_names=spec.input_names, output_names=spec.output_names)
    try:
        with _quiet(), torch.no_grad():
            torch.onnx.export(module, example, str(path), opset_version=opset, dynamic_axes=axes, dynamo=False,
                              do_constant_folding=True, **names)
        return "torchscript"
    except Exception as first:  # noqa: BLE001 — any exporter failure: try the other exporter, then explain
        try:
            _export_dynamo(module, spec, example, path, opset, dynamic)
            return "dynamo"
        except Exception:  # noqa: BLE001
            raise ExportError(f"this {type(module).__name__} model cannot be exported to ONNX "
                              f"({_first_line(first)})") from None


def _export_dynamo(module, spec, example, path, opset, dynamic):
    import onnx

    shapes = None
    if dynamic:
        dims: dict[str, object] = {}
        shapes = {name: {ax: dims.setdefault(n, torch.export.Dim.DYNAMIC) for ax, n in
                         spec.dynamic_axes.get(name, {}).items()} for name in spec.input_names}
    with _quiet(), torch.no_grad():
        prog = torch.onnx.export(module, example, input_names=spec.input_names, output_names=spec.output_names,
                                 opset_version=max(opset, 18), dynamo=True, dynamic_shapes=shapes,
                                 external_data=False)
    model = prog.model_proto
    del model.graph.value_info[:]  # stale shape annotations break onnxruntime's quantizer
    onnx.save(model, str(path))


def export_torchscript(module: nn.Module, example: tuple, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(module.eval(), example, check_trace=False, strict=False)
            traced.save(str(path))
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"this {type(module).__name__} model cannot be exported to TorchScript "
                          f"({_first_line(e)})") from None


@torch.no_grad()
def parity(reference: nn.Module, candidate, batches: list[tuple]) -> dict:
    """max |Δ| between the two models' outputs over `batches`, and how often their argmax agrees."""
    worst, scale, agree, rows, classes = 0.0, 0.0, 0, 0, False
    for b in batches:
        refs, outs = _outputs(reference(*b)), _outputs(candidate(*b))
        if len(refs) != len(outs) or any(r.shape != o.shape for r, o in zip(refs, outs, strict=False)):
            raise ExportError(f"the export's outputs {[tuple(o.shape) for o in outs]} differ in shape from "
                              f"PyTorch's {[tuple(r.shape) for r in refs]}")
        for r, o in zip(refs, outs, strict=True):
            worst = max(worst, float((r.float() - o.float()).abs().max()) if r.numel() else 0.0)
            scale = max(scale, float(r.float().abs().max()) if r.numel() else 0.0)
        ref, out = refs[0].float(), outs[0].float()
        classes = len(refs) == 1 and ref.ndim == 2 and ref.shape[1] > 1
        agree += int((ref.argmax(-1) == out.argmax(-1)).sum()) if classes else 0
        rows += ref.shape[0]
    res = {"max_abs_diff": worst, "output_scale": scale, "rows": rows, "batches": len(batches)}
    if classes:
        res["argmax_agreement"] = round(agree / max(rows, 1), 6)
    return res


def head_file(path: Path, rows: int, folder: Path) -> Path:
    """The first `rows` records of a data file (plus its header line), copied into `folder` under the same name
    (so the format is told the same way): a bounded read, whatever the file's size. Lines are copied as bytes, so
    the configured encoding applies unchanged; a CSV record spanning lines may be cut (the caller reads more)."""
    out = folder / Path(path).name
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        first = next(pq.ParquetFile(path).iter_batches(batch_size=rows), None)
        if first is None:
            raise ExportError(f"{path}: no rows")
        pq.write_table(pa.Table.from_batches([first]), out)
        return out
    with open(path, "rb") as src, open(out, "wb") as dst:
        for i, line in enumerate(src):
            if i > rows:
                break
            dst.write(line)
    return out


def bounded_sample(run: Path, cfg, samples: int, batch_size: int = 16):
    """The export's model and parity batches without preparing the training data again: the run's own predictor
    (its saved vocabulary / preprocessing, on PyTorch, CPU) runs the first `samples` rows of the run's validation
    file (else its test file, else its training file), read bounded and cleaned as at training, and the model's
    forward() inputs are captured batch by batch. Returns (model, spec, batches, split), or None where the task
    has no such path or the bounded read fails (export then prepares the data as before)."""
    import tempfile

    from luban.errors import LubanError

    d = cfg.data
    split, path = next(((s, getattr(d, s)) for s in ("validation", "test", "train") if getattr(d, s)), (None, None))
    if path is None or not Path(path).is_file():
        return None
    from luban.capabilities import TaskPredictor
    from luban.tasks import task_classes

    if task_classes(cfg.task)[1].parity_rows is TaskPredictor.parity_rows:
        return None
    impl = load_torch(run)
    if not isinstance(impl.model, nn.Module):
        return None
    calls: list[tuple] = []
    hook = impl.model.register_forward_pre_hook(
        lambda _m, args: calls.append(tuple(a.detach().cpu() for a in args)))
    try:
        for lines in (samples + 8, samples * 8, samples * 64):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    rows = impl.parity_rows(head_file(Path(path), lines, Path(tmp)))
                except LubanError:  # e.g. a quoted CSV field cut at the last line: read further
                    continue
            if rows is None:
                return None
            rows = rows.iloc[:samples] if hasattr(rows, "iloc") else rows[:samples]
            with torch.no_grad():
                for i in range(0, len(rows), batch_size):
                    impl.predict(rows.iloc[i:i + batch_size] if hasattr(rows, "iloc") else rows[i:i + batch_size])
            break
    except LubanError:
        return None
    finally:
        hook.remove()
    if not calls:
        return None
    spec = impl.export_spec()
    model = OutputTuple(impl.model, spec.output_names) if spec.outputs_dict else impl.model
    return model.eval(), spec, calls, split


def _replace_dir(tmp: Path, final: Path) -> None:
    """`tmp` becomes RUN/model/<sub> (`final`); the run's manifest then lists the new files."""
    import luban.manifest as manifest

    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    manifest.refresh(final.parent.parent)


@contextlib.contextmanager
def _staged(final: Path):
    """A fresh temporary folder beside `final` (`.NAME.tmp`), removed afterwards whatever happens: the caller writes
    and checks there, then moves it into place with _replace_dir — a failed export leaves `final` as it was."""
    tmp = final.parent / f".{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def export_run(run_dir, fmt: str = "onnx", opset: int | None = None, dynamic_axes: bool = True,
               samples: int = 128, quiet: bool = False) -> dict:
    """Export a finished run's model into its model/ folder (onnx/ or torchscript/, plus hf/ for HF backbones)
    with a parity check on `samples` validation rows; returns what export.json stores."""
    from luban.compress.onnx_predictor import OrtModule, require_onnxruntime
    from luban.compress.runs import file_bytes, fp32_weights, prepared_task, run_config, torch_model

    if fmt == "hf":
        return export_hf_run(run_dir, quiet)
    if fmt == "embeddings":
        return export_embeddings_run(run_dir, quiet)
    if fmt not in ("onnx", "torchscript"):
        raise ExportError(f"--format must be onnx, torchscript, hf or embeddings (got {fmt!r})")
    if fmt == "onnx":
        require_onnxruntime()
    run = check_finished(run_dir)
    cfg = run_config(run)
    if cfg.task == "text_embedding":  # an encoder: `luban export` calls luban.embedding.export for it
        raise ExportError("a text_embedding run exports with luban.embedding.export.export_encoder_onnx (what "
                          "`luban export RUN --format onnx` runs for it)")
    t0 = time.perf_counter()
    from luban.tasks import task_classes

    if not task_classes(cfg.task)[1].exportable:
        raise ExportError(f"export and compression are not supported for task {cfg.task}")
    from luban.training.progress import stage

    with stage(f"export {fmt}", total=3, unit="steps") as st:
        fp32_weights(run)
        st.update(step="parity sample")
        sample = bounded_sample(run, cfg, samples)
        if sample is not None:
            model, spec, batches, split = sample
        else:  # the task's data prepared again, as at training (tasks without a bounded parity path)
            task = prepared_task(cfg)
            spec = task.export_spec()
            model = task.export_module(torch_model(task, run))
            batches, split = task.split_inputs("validation", samples, batch_size=16), "validation"
        st.advance(step="trace and write")
        if not batches:
            raise ExportError(f"{run}: no {split} rows to check the export against")
        example = example_batch(batches)
        model_dir = run / "model"
        sub = ONNX_DIR if fmt == "onnx" else TORCHSCRIPT_DIR
        with _staged(model_dir / sub) as tmp:
            if fmt == "onnx":
                path = tmp / ONNX_FILE
                own = getattr(model, "export_onnx", None)  # a model with its own converter (gbdt: onnxmltools)
                exporter = (own(path, opset or DEFAULT_OPSET) if callable(own) else
                            export_onnx(model, spec, example, path, opset or DEFAULT_OPSET, dynamic_axes))
                check = batches if dynamic_axes else [example]
                candidate = OrtModule(path, replace(spec, outputs_dict=False))
            else:
                path = tmp / "model.pt"
                export_torchscript(model, example, path)
                exporter, check = "torch.jit.trace", batches
                candidate = torch.jit.load(str(path))
            st.advance(step="parity check")
            par = parity(model, candidate, check)
            tol = PARITY_TOLERANCE * max(1.0, par["output_scale"])
            if par["max_abs_diff"] > tol:
                raise ExportError(f"the {fmt} export does not match PyTorch on {split} inputs: max |Δ| "
                                  f"{par['max_abs_diff']:.3g} > {tol:.3g} (the model likely has data-dependent "
                                  "control flow that tracing cannot capture)")
            meta = {"format": fmt, "file": f"{sub}/{path.name}", "exporter": exporter,
                    "opset": (opset or DEFAULT_OPSET) if fmt == "onnx" else None, "dynamic_axes": dynamic_axes,
                    "input_names": spec.input_names, "output_names": spec.output_names,
                    "parity": {**par, "split": split, "tolerance": tol}, "size_bytes": file_bytes(path),
                    "torch": torch.__version__}
            if fmt == "onnx":
                meta["onnxruntime"] = require_onnxruntime().__version__
            (tmp / EXPORT_META).write_text(json.dumps(meta, indent=1), encoding="utf-8")
            del candidate
            _replace_dir(tmp, model_dir / sub)
        st.advance()
        hf = _export_hf(load_torch(run))
        meta["hf"] = f"model/{HF_DIR}" if hf else None
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    if not quiet:
        p = meta["parity"]
        print(f"exported {run} -> {model_dir / sub / path.name} ({meta['size_bytes'] / 2**20:.2f} MB, {exporter} "
              f"exporter)\nparity on {p['rows']} {p['split']} rows: max |Δ| {p['max_abs_diff']:.3g}"
              + (f", argmax agreement {p['argmax_agreement']:.4f}" if "argmax_agreement" in p else ""))
        if hf:
            print(f"Hugging Face layout: {run / 'model' / HF_DIR}")
    return meta


def export_hf_run(run_dir, quiet: bool = False) -> dict:
    """`luban export RUN --format hf`: the run's model in Hugging Face `save_pretrained` layout (model/hf/), where
    the task has one (a GPT trained from scratch becomes a GPT-2; HF-backbone runs are saved as their backbone's
    class), loaded back with transformers and checked when the task says how (max |Δ| of the logits)."""
    from luban.compress.runs import file_bytes, run_config

    run = check_finished(run_dir)
    t0 = time.perf_counter()
    impl = load_torch(run)
    final = run / "model" / HF_DIR
    par = None

    def check(tmp: Path) -> None:  # the export loaded back by its consumer, where the task says how
        nonlocal par
        with _quiet():
            par = impl.check_hf(tmp) if hasattr(impl, "check_hf") else None
        if par is not None:
            tol = PARITY_TOLERANCE * 10  # logits, not probabilities: an absolute 1e-2 on values of order 10
            if par["max_abs_diff"] > tol or not par.get("tokenizer_ids_equal", True):
                raise ExportError(f"the Hugging Face export does not match luban's model: max |Δ| of the logits "
                                  f"{par['max_abs_diff']:.3g}, tokenizer ids equal: {par.get('tokenizer_ids_equal')}")

    if not _export_hf(impl, check):
        if (final / "config.json").is_file():  # a pretrained backbone's run keeps it there from training
            if not quiet:
                print(f"{run} already holds its model in Hugging Face layout: {final}")
            return {"format": "hf", "folder": str(final), "written": False}
        raise ExportError(f"{run}: this model ({run_config(run).model.type}) has no Hugging Face layout; "
                          "`luban export --format onnx` writes a standalone graph")
    meta = {"format": "hf", "folder": str(final), "written": True, "parity": par, "size_bytes": file_bytes(final),
            "seconds": round(time.perf_counter() - t0, 2)}
    if not quiet:
        print(f"exported {run} -> {final} (Hugging Face layout, {meta['size_bytes'] / 2**20:.2f} MB)")
        if par is not None:
            print(f"loaded back with transformers: max |Δ| of the logits {par['max_abs_diff']:.3g}, tokenizer ids "
                  f"{'equal' if par.get('tokenizer_ids_equal') else 'DIFFERENT'}")
    return meta


def export_embeddings_run(run_dir, quiet: bool = False) -> dict:
    """`luban export RUN --format embeddings`: a recommender's user and item vectors as Parquet (model/embeddings/),
    for a vector database's inner-product search; see RecommendationPredictor.export_embeddings."""
    run = check_finished(run_dir)
    impl = load_torch(run)
    if not hasattr(impl, "export_embeddings"):
        raise ExportError(f"--format embeddings is for recommendation runs (this run's task is {impl.cfg.task})")
    final = run / "model" / "embeddings"
    with _staged(final) as tmp:
        meta = impl.export_embeddings(tmp)
        _replace_dir(tmp, final)
    if not quiet:
        print(f"exported {run} -> {final}: {meta['users']} users and {meta['items']} items, {meta['dim']} dimensions, "
              f"score = user · item (max |Δ| vs the model {meta['parity']['max_abs_diff']:.3g})")
    return meta


def load_torch(run: Path):
    """The run's task predictor on PyTorch (CPU): what the Hugging Face and vector exports read."""
    from luban.predictor import load

    return load(run, device="cpu", backend="torch")


def _export_hf(impl, check=None) -> bool:
    """model/hf/ from the task predictor's export_hf (a Hugging Face backbone, a GPT from scratch), checked by
    `check(folder)` before it replaces anything; False when the predictor has no such layout to write."""
    final = Path(impl.folder) / HF_DIR
    with _staged(final) as tmp:
        with _quiet():
            done = impl.export_hf(tmp)
        if done:
            if check is not None:
                check(tmp)
            _replace_dir(tmp, final)
        return bool(done)
