"""`luban export` on a run trained from a large text file (default 62,000 rows, 10 classes, like the shopping-review
set of issue 17): seconds for the export with its parity sample drawn by a bounded read (now) and with the whole
training set read, cleaned, split and featurized again (before). Prints one JSON line last.

    PYTHONPATH=src python benchmarks/export_parity.py [--rows 62000] [--run RUN_DIR]
Each export runs in a fresh process (imports included, as `luban export` pays them).
"""

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, work_dir  # noqa: E402


def synthetic(path: Path, rows: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    words = [chr(0x4E00 + i) for i in range(3000)]
    with open(path, "w", encoding="utf-8") as f:
        f.write("review,cat\n")
        for _ in range(rows):
            label = rng.randrange(10)
            text = "".join(rng.choice(words[label * 300:(label + 1) * 300]) if rng.random() < 0.3
                           else rng.choice(words) for _ in range(rng.randint(20, 120)))
            f.write(f"{text},c{label}\n")
    return path


EXPORT = """
import sys, time
t = time.perf_counter()
from luban.compress import export as ex, runs
spent = [0.0]
def timed(fn):
    def run(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[0] += time.perf_counter() - t
    return run
if sys.argv[2] == "full":
    ex.bounded_sample = lambda *a, **k: None  # the former path: prepare the whole task again
    runs.prepared_task = timed(runs.prepared_task)
else:
    ex.bounded_sample = timed(ex.bounded_sample)
meta = ex.export_run(sys.argv[1], "onnx", quiet=True)
print(time.perf_counter() - t, spent[0], meta["parity"]["rows"], meta["parity"]["max_abs_diff"])
"""


def export_seconds(run: Path, how: str) -> tuple[float, float, int, float]:
    """One `export` in a fresh process (imports included, as the CLI pays them): its wall seconds, the seconds
    spent getting the parity sample, the rows and max |Δ|."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", EXPORT, str(run), how], check=True, capture_output=True, text=True)
    seconds, sample, rows, diff = out.stdout.split()[-4:]
    return float(seconds), float(sample), int(rows), float(diff)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=62000)
    ap.add_argument("--run", help="an existing run trained by this script (skips the training)")
    a = ap.parse_args()
    train_s = None
    if a.run:
        run = Path(a.run)
    else:
        import luban

        root = work_dir()
        data = synthetic(root / "shopping.csv", a.rows)
        cfg = {"task": "text_classification", "seed": 0,
               "data": {"train": str(data), "columns": {"text": "review", "label": "cat"}},
               "preprocessing": {"tokenizer": {"type": "char", "max_length": 128}},
               "model": {"type": "textcnn", "embedding_dim": 16, "num_filters": 16, "kernel_sizes": [2]},
               "trainer": {"epochs": 1, "batch_size": 256, "device": "cpu", "precision": "fp32"},
               "evaluation": {"baseline": False}, "output": {"dir": str(root / "runs"), "name": "shop",
                                                             "tensorboard": False}}
        t = time.perf_counter()
        run = luban.train(cfg, quiet=True)
        train_s = round(time.perf_counter() - t, 1)
    bounded_s, bounded_sample_s, rows, diff = export_seconds(run, "bounded")
    full_s, full_sample_s, _, diff_full = export_seconds(run, "full")
    emit({"rows": a.rows, "train_seconds": train_s, "export_seconds_bounded": round(bounded_s, 2),
          "export_seconds_full_prepare": round(full_s, 2), "parity_sample_seconds_bounded": round(bounded_sample_s, 2),
          "parity_sample_seconds_full_prepare": round(full_sample_s, 2), "parity_rows": rows,
          "parity_max_abs_diff_bounded": diff, "parity_max_abs_diff_full_prepare": diff_full})


if __name__ == "__main__":
    main()
