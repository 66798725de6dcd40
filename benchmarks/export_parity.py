"""`luban export` on a run trained from a large text file (default 62,000 rows, 10 classes, like the shopping-review
set of issue 17): seconds for the export with its parity sample drawn by a bounded read (now) and with the whole
training set read, cleaned, split and featurized again (before). Prints one JSON line last.

    PYTHONPATH=src python benchmarks/export_parity.py [--rows 62000]
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=62000)
    a = ap.parse_args()
    import luban
    from luban.compress import export as ex

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
    train_s = time.perf_counter() - t
    t = time.perf_counter()
    now = ex.export_run(run, "onnx", quiet=True)
    bounded_s = time.perf_counter() - t
    ex.bounded_sample = lambda *a, **k: None  # the former path: prepare the whole task again
    t = time.perf_counter()
    before = ex.export_run(run, "onnx", quiet=True)
    full_s = time.perf_counter() - t
    emit({"rows": a.rows, "train_seconds": round(train_s, 1), "export_seconds_bounded": round(bounded_s, 2),
          "export_seconds_full_prepare": round(full_s, 2), "parity_rows": now["parity"]["rows"],
          "parity_max_abs_diff_bounded": now["parity"]["max_abs_diff"],
          "parity_max_abs_diff_full_prepare": before["parity"]["max_abs_diff"]})


if __name__ == "__main__":
    main()
