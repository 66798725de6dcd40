"""How fast the CLI answers: config errors, the first prediction, a server's readiness.

    python benchmarks/cli_latency.py                  # trains a small text-classification run first
    python benchmarks/cli_latency.py --run runs/demo  # or times an existing run
    python benchmarks/cli_latency.py --baseline /work/main/src    # also time another checkout's code

Every figure is the wall time of a fresh `python -m luban ...` process (what a user waits for), the median of
--repeats runs (with --baseline, the two trees' runs alternate, so both see the same machine load):
- config_error_seconds: `luban train bad.yaml` with a typo'd key until it exits with the error;
- missing_file_seconds / missing_column_seconds: a config naming a data file that does not exist / a column the
  file does not have;
- predict_first_row_seconds: `luban predict RUN --text ... --text ...` until the first output row is printed;
- serve_ready_seconds: `luban serve RUN` until /readyz answers 200 (the model is loaded and warm);
- load_predict_seconds: `python -c "import luban; luban.load(RUN).predict([...])"`;
- predict_first_row_onnx_seconds, serve_ready_onnx_seconds, load_predict_onnx_seconds: the same three on a copy
  of the run exported to ONNX (`luban export`), with `--backend onnx` / backend="onnx": onnxruntime + NumPy, no
  torch (the first three keep timing the run without an export, i.e. PyTorch).
Each figure also has a <figure>_cpu_seconds twin: the CPU time the process used (user + system), which a loaded
machine inflates far less than wall time. The last line is one JSON object (with --baseline, also
baseline_<figure> and <figure>_speedup for each).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, free_port, stop  # noqa: E402

LUBAN = [sys.executable, "-m", "luban"]


def _rows(n_per_label: int = 60, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    nouns = ["phone", "hotel", "service", "movie", "room", "price", "screen", "delivery"]
    rows = []
    for label, word in (("positive", "good"), ("negative", "bad")):
        combos = [f"the {n} was {a} {word} {s}".strip() for n in nouns for a in ("very", "really", "quite", "so")
                  for s in ("", "today", "again", "overall")]
        rows += [(t, label) for t in rng.sample(combos, min(n_per_label, len(combos)))]
    rng.shuffle(rows)
    return rows


def _write_csv(path: Path, rows) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)
    return path


def _config(path: Path, train: str, text_col: str = "text", typo: bool = False, out: Path | None = None) -> Path:
    columns = "colums" if typo else "columns"
    path.write_text(f"""task: text_classification
data:
  train: {train}
  {columns}: {{text: {text_col}, label: label}}
  split: {{validation: 0.2, test: 0.2}}
model: {{type: textcnn, embedding_dim: 16, num_filters: 8}}
trainer: {{epochs: 2, batch_size: 16}}
output: {{dir: {out or path.parent / 'runs'}, name: bench, tensorboard: false}}
""", encoding="utf-8")
    return path


def _env(src: str | None) -> dict:
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    return env


def _wall(cmd: list[str], first_line: bool = False, expect_rc: int | None = None, src: str | None = None) -> float:
    """Seconds until `cmd` exits (or, with first_line, prints its first stdout line); `src`: the luban tree."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(src))
    if first_line:
        line = p.stdout.readline()
        took = time.perf_counter() - t0
        out, err = p.communicate()
        if not line:
            raise SystemExit(f"{' '.join(cmd)}: no output\n{err}")
        return took
    out, err = p.communicate()
    took = time.perf_counter() - t0
    if expect_rc is not None and p.returncode != expect_rc:
        raise SystemExit(f"{' '.join(cmd)}: exit code {p.returncode}, expected {expect_rc}\n{out}\n{err}")
    return took


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far: less sensitive to a loaded machine
    than wall time."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _serve_ready(run: Path, src: str | None = None, timeout: float = 300.0,
                 extra: tuple[str, ...] = ()) -> tuple[float, float | None]:
    """(seconds until /readyz answers 200, seconds until "serving on" was printed)."""
    port = free_port()
    t0 = time.perf_counter()
    p = subprocess.Popen(LUBAN + ["serve", str(run), "--port", str(port), *extra], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=_env(src))
    announced = None
    try:
        os.set_blocking(p.stdout.fileno(), False)
        while time.perf_counter() - t0 < timeout:
            if p.poll() is not None:
                raise SystemExit(f"luban serve exited with {p.returncode}: {p.stdout.read()}")
            line = p.stdout.readline()
            if announced is None and line and "serving" in line:
                announced = time.perf_counter() - t0
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0, announced
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.05)
        raise SystemExit(f"luban serve: not ready after {timeout}s")
    finally:
        stop(p)


def _onnx_copy(run: Path, tmp: Path) -> Path:
    """A copy of `run` exported to ONNX (the run itself keeps no export, so its figures stay PyTorch's)."""
    import shutil

    copy = Path(shutil.copytree(run, tmp / "onnx_run" / run.name, ignore=shutil.ignore_patterns("onnx")))
    subprocess.run(LUBAN + ["export", str(copy), "--format", "onnx"], check=True, stdout=subprocess.DEVNULL)
    return copy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", default=None, help="a finished text-classification run (default: train a small one)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-serve", action="store_true", help="skip the server figure (no fastapi/uvicorn)")
    ap.add_argument("--baseline", default=None, metavar="SRC",
                    help="another luban source tree (e.g. /work/main/src) timed alternately with this one")
    a = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="luban-cli-latency-"))
    data = _write_csv(tmp / "reviews.csv", _rows())
    typo = _config(tmp / "typo.yaml", str(data), typo=True)
    missing_file = _config(tmp / "missing_file.yaml", str(tmp / "no_such_file.csv"))
    missing_col = _config(tmp / "missing_column.yaml", str(data), text_col="sentence")

    train_seconds = None
    if a.run:
        run = Path(a.run)
    else:
        t0 = time.perf_counter()
        subprocess.run(LUBAN + ["train", str(_config(tmp / "good.yaml", str(data)))], check=True,
                       stdout=subprocess.DEVNULL)
        train_seconds = time.perf_counter() - t0
        run = tmp / "runs" / "bench"
    onnx_run = _onnx_copy(run, tmp)

    trees = [("", None)] + ([("baseline_", a.baseline)] if a.baseline else [])
    texts = ["--text", "the room was very good", "--text", "the price was so bad"]
    figures = {
        "config_error_seconds": lambda src: _wall(LUBAN + ["train", str(typo)], expect_rc=2, src=src),
        "missing_file_seconds": lambda src: _wall(LUBAN + ["train", str(missing_file)], expect_rc=2, src=src),
        "missing_column_seconds": lambda src: _wall(LUBAN + ["train", str(missing_col)], expect_rc=2, src=src),
        "version_seconds": lambda src: _wall(LUBAN + ["--version"], expect_rc=0, src=src),
        "predict_first_row_seconds": lambda src: _wall(LUBAN + ["predict", str(run)] + texts, first_line=True,
                                                       src=src),
        "load_predict_seconds": lambda src: _wall(
            [sys.executable, "-c", f"import luban; luban.load({str(run)!r}).predict(['the movie was good'])"],
            expect_rc=0, src=src),
        "predict_first_row_onnx_seconds": lambda src: _wall(LUBAN + ["predict", str(onnx_run), "--backend", "onnx"]
                                                            + texts, first_line=True, src=src),
        "load_predict_onnx_seconds": lambda src: _wall(
            [sys.executable, "-c", f"import luban; luban.load({str(onnx_run)!r}, backend='onnx')"
             ".predict(['the movie was good'])"], expect_rc=0, src=src),
    }
    if not a.no_serve:
        figures["serve_ready_seconds"] = lambda src: _serve_ready(run, src)[0]
        figures["serve_ready_onnx_seconds"] = lambda src: _serve_ready(onnx_run, src, extra=("--backend", "onnx"))[0]
    res, cpu = {}, {}
    for name, fn in figures.items():
        times = {prefix: [] for prefix, _ in trees}
        cpus = {prefix: [] for prefix, _ in trees}
        for _ in range(a.repeats):
            for prefix, src in trees:  # alternate the trees: both see the same machine load
                before = _children_cpu()
                times[prefix].append(fn(src))
                cpus[prefix].append(_children_cpu() - before)
        for prefix, _ in trees:
            res[prefix + name] = round(statistics.median(times[prefix]), 3)
            cpu[prefix + name.replace("_seconds", "_cpu_seconds")] = round(statistics.median(cpus[prefix]), 3)
        if a.baseline:
            res[name.replace("_seconds", "_speedup")] = round(res["baseline_" + name] / res[name], 2)
        print(f"{name}: " + "  ".join(f"{prefix or 'this '}{res[prefix + name]}" for prefix, _ in trees),
              file=sys.stderr, flush=True)
    import luban

    res.update(cpu)
    res.update({"repeats": a.repeats, "train_seconds": round(train_seconds, 1) if train_seconds else None,
                "luban": str(Path(luban.__file__).parent), "baseline": a.baseline, "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2)})
    emit(res)


if __name__ == "__main__":
    main()
