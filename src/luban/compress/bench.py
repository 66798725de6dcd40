"""`luban benchmark RUN [RUN...] --data FILE`: size on disk, parameters, latency p50/p95 at batch 1, throughput at
batch 32 and the task's main metric, each run through `luban.load(run)` (its default backend), end to end:
preprocessing + model + postprocessing, as `predict()` does it. The table is printed, stored as benchmark.json in
every run and added to its report.html."""

from __future__ import annotations

import html
import json
import re
import statistics
import time
from pathlib import Path

import torch

MARK_START, MARK_END = "<!-- luban-benchmark -->", "<!-- /luban-benchmark -->"


def _take(inputs, i: int, j: int):
    return inputs.iloc[i:j] if hasattr(inputs, "iloc") else inputs[i:j]


def throughput(predict, inputs, batch_size: int = 32, repeats: int = 1) -> float:
    """Rows per second of `predict` over `inputs` in consecutive batches (one warm-up batch; best of `repeats`)."""
    n = len(inputs)
    predict(_take(inputs, 0, batch_size))
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        for i in range(0, n, batch_size):
            predict(_take(inputs, i, i + batch_size))
        best = max(best, n / (time.perf_counter() - t))
    return best


def benchmark_run(run, data, batch_size: int = 32, latency_rows: int = 200, warmup: int = 3,
                  backend: str = "auto") -> dict:
    from luban.compress.runs import run_metrics, weights_bytes
    from luban.predictor import load

    p = load(run, backend=backend)
    run = p.run_dir
    metrics = run_metrics(run)
    inputs = p.read_inputs(data)
    n = len(inputs)
    for i in range(min(warmup, n)):
        p.predict(_take(inputs, i, i + 1))
    lat = []
    for i in range(min(latency_rows, n)):
        t = time.perf_counter()
        p.predict(_take(inputs, i, i + 1))
        lat.append((time.perf_counter() - t) * 1000)
    rows_per_s = throughput(p.predict, inputs, batch_size)
    main = metrics["main_metric"]
    score = p.evaluate(data).get(main)
    params = metrics.get("parameters", {})
    lat.sort()
    return {"run": str(run), "name": run.name, "backend": p.backend,
            "method": metrics.get("compression", {}).get("method", "fp32"),
            "size_mb": round(weights_bytes(run / "model") / 2**20, 3), "parameters": params.get("total"),
            "nonzero_parameters": params.get("nonzero", params.get("total")),
            "latency_p50_ms": round(statistics.median(lat), 3) if lat else None,
            "latency_p95_ms": round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 3) if lat else None,
            "throughput": round(rows_per_s, 1), "batch_size": batch_size, "metric": main,
            "score": round(score, 6) if isinstance(score, (int, float)) else None, "rows": n,
            "threads": torch.get_num_threads(), "data": str(data)}


COLUMNS = [("name", "run"), ("method", "model"), ("backend", "backend"), ("size_mb", "MB on disk"),
           ("parameters", "parameters"), ("latency_p50_ms", "p50 ms b=1"), ("latency_p95_ms", "p95 ms b=1"),
           ("throughput", "rows/s b=32"), ("score", "metric")]


def _cell(row: dict, key: str) -> str:
    v = row.get(key)
    if key == "parameters" and v is not None:
        nz = row.get("nonzero_parameters")
        return f"{v:,}" + (f" ({nz:,} nonzero)" if nz is not None and nz != v else "")
    if key == "score" and v is not None:
        return f"{v:.4f}"
    if isinstance(v, float):
        return f"{v:.2f}"
    return "" if v is None else str(v)


def html_table(rows: list[dict]) -> str:
    E = html.escape
    head = "".join(f"<th class=l>{E(t)}</th>" if k in ("name", "method", "backend") else
                   f"<th>{E(rows[0]['metric'] if k == 'score' else t)}</th>" for k, t in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td class=l>{E(_cell(r, k))}</td>" if k in ("name", "method", "backend")
                                    else f"<td>{E(_cell(r, k))}</td>" for k, _ in COLUMNS) + "</tr>" for r in rows)
    r0 = rows[0]
    return (f"{MARK_START}<h2>Benchmark</h2><p class=muted>{E(r0['data'])}: {r0['rows']} rows, "
            f"{r0['threads']} threads; latency is one predict() call on one input, throughput predict() on batches "
            f"of {r0['batch_size']}, end to end</p><table><tr>{head}</tr>{body}</table>{MARK_END}")


def add_to_report(run: Path, rows: list[dict]) -> None:
    """Put the table into run/report.html (replacing an earlier benchmark section) and run/benchmark.json."""
    import luban.manifest as manifest

    (run / "benchmark.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    report = run / "report.html"
    if not report.is_file():
        manifest.refresh(run)
        return
    text = report.read_text(encoding="utf-8")
    text = re.sub(re.escape(MARK_START) + ".*?" + re.escape(MARK_END), "", text, flags=re.S)
    section = html_table(rows)
    text = text.replace("</body>", section + "</body>") if "</body>" in text else text + section
    report.write_text(text, encoding="utf-8")
    manifest.refresh(run)


def print_table(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"benchmark on {rows[0]['data']} ({rows[0]['rows']} rows, {rows[0]['threads']} threads)")
    for k, title in COLUMNS:
        title = rows[0]["metric"] if k == "score" else title
        table.add_column(title, justify="left" if k in ("name", "method", "backend") else "right")
    for r in rows:
        table.add_row(*[_cell(r, k) for k, _ in COLUMNS])
    console = Console()
    Console(width=max(console.width, 150)).print(table)


def benchmark(runs: list, data, batch_size: int = 32, latency_rows: int = 200, quiet: bool = False,
              backends: list[str] | None = None) -> list[dict]:
    """Benchmark each run (with its default backend, or backends[i]); print and store the table."""
    backends = backends or ["auto"] * len(runs)
    rows = [benchmark_run(r, data, batch_size, latency_rows, backend=b) for r, b in zip(runs, backends, strict=True)]
    for r in rows:
        add_to_report(Path(r["run"]), rows)
    if not quiet:
        print_table(rows)
    return rows
