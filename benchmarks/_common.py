"""Shared helpers for benchmark scripts: peak memory, the final JSON line, TSV dataset folders."""

import csv
import json
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / 1024 if sys.platform != "darwin" else kb / 2**20, 1)


def emit(result: dict) -> None:
    """The last printed line of every benchmark is one JSON object."""
    print(json.dumps(result, ensure_ascii=False), flush=True)


def work_dir() -> Path:
    """A fresh folder under $TMPDIR for one benchmark's data splits and runs."""
    return Path(tempfile.mkdtemp(prefix="luban-bench-"))


def train_run(config, overrides: list[str], out=None, name: str = "bench", quiet: bool = False):
    """Train `config` into `out` (default: a fresh work_dir()) as run `name`, no TensorBoard; `overrides` come last so
    a benchmark's --set wins. Returns the run folder, its metrics.json and the wall seconds of the whole call."""
    import luban

    out = out or work_dir()
    t0 = time.perf_counter()
    run = luban.train(str(config), [f"output.dir={out}", f"output.name={name}", "output.tensorboard=false"]
                      + list(overrides), quiet=quiet)
    total = time.perf_counter() - t0
    return run, json.loads((run / "metrics.json").read_text(encoding="utf-8")), total


def run_figures(metrics: dict, total_seconds: float) -> dict:
    """The timing, memory and environment fields every benchmark reports from a run's metrics.json."""
    t, env = metrics["timings"], metrics["environment"]
    return {"train_seconds": round(t["train_seconds"], 1), "fit_seconds": round(t["fit_seconds"], 1),
            "prepare_seconds": round(t["prepare_seconds"], 1), "total_seconds": round(total_seconds, 1),
            "peak_rss_mb": peak_rss_mb(), "threads": env["threads"], "precision": env["precision"]}


def tsv_folder_overrides(data) -> list[str]:
    """--set overrides pointing a text-classification config at a folder of train.tsv / dev.tsv / test.tsv (the
    ChnSentiCorp and SST-2 layouts: a label column and a text_a / sentence / text column)."""
    data = Path(data)
    with open(data / "train.tsv", encoding="utf-8-sig") as f:
        header = next(csv.reader(f, delimiter="\t"))
    text_col = next(c for c in ("text_a", "sentence", "text") if c in header)
    return [f"data.train={data / 'train.tsv'}", f"data.validation={data / 'dev.tsv'}",
            f"data.test={data / 'test.tsv'}", f"data.columns.text={text_col}", "data.columns.label=label"]


def compressed_figures(run: Path, data, methods=("int8-dynamic",), latency_rows: int = 50) -> dict:
    """`luban export` + `luban compress --quantize METHOD` of a finished run, then `luban benchmark` of the fp32
    PyTorch model, its ONNX export and each compressed run on `data` (end to end: preprocessing included).
    Returns {name: {backend, size_mb, latency_p50_ms, throughput, score}} and the export's parity."""
    from luban.compress.bench import benchmark_run
    from luban.compress.export import export_run
    from luban.compress.quantize import quantize_run

    run = Path(run)
    rows = {"fp32-torch": benchmark_run(run, data, latency_rows=latency_rows, backend="torch")}
    parity = export_run(run, quiet=True)["parity"]
    rows["fp32-onnx"] = benchmark_run(run, data, latency_rows=latency_rows)
    for method in methods:
        rows[method] = benchmark_run(quantize_run(run, method, overwrite=True, quiet=True), data,
                                     latency_rows=latency_rows)
    keep = ("backend", "size_mb", "latency_p50_ms", "throughput", "metric", "score")
    return {"export_max_abs_diff": parity["max_abs_diff"],
            **{name: {k: r[k] for k in keep} for name, r in rows.items()}}


def free_port() -> int:
    """A TCP port nothing listens on (for a benchmark's own server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Stop a benchmark's server process: SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
