"""Distributed-training correctness benchmark: examples/chnsenticorp.yaml trained in one process and on N Ray Train
workers (DDP over gloo, trainer.batch_size kept as the global batch).

    python benchmarks/distributed.py --data ../shared/data/chnsenticorp --workers 2

Prints single/ray test accuracy and wall seconds (one JSON line). On one 2-core machine two workers are not
faster (Ray start-up and gradient all-reduce cost more than they save); the point is the same result at scale.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, tsv_folder_overrides, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.tsv, dev.tsv, test.tsv")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()

    out = work_dir()
    base = tsv_folder_overrides(a.data)
    config = ROOT / "examples" / "chnsenticorp.yaml"
    result = {"dataset": Path(a.data).name, "workers": a.workers}
    for name, extra in (("single", []), ("ray", ["trainer.distributed.backend=ray",
                                                 f"trainer.distributed.workers={a.workers}"])):
        _, m, seconds = train_run(config, base + extra, out=out, name=name, quiet=True)
        result.update({f"{name}_test_accuracy": round(m["test"]["accuracy"], 4),
                       f"{name}_val_accuracy": round(m["validation"]["accuracy"], 4),
                       f"{name}_best_epoch": m["best_epoch"], f"{name}_seconds": round(seconds, 1),
                       f"{name}_train_seconds": round(m["timings"]["train_seconds"], 1)})
    result["abs_difference"] = round(abs(result["ray_test_accuracy"] - result["single_test_accuracy"]), 4)
    result["peak_rss_mb"] = peak_rss_mb()
    emit(result)


if __name__ == "__main__":
    main()
