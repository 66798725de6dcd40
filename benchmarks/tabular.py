"""Tabular regression benchmark on scikit-learn's diabetes data (offline):

    python benchmarks/tabular.py [--config examples/tabular_diabetes.yaml] [--seeds 0 1 2]

Prints test_rmse of luban's MLP and baseline_rmse (the better of ridge / gradient boosting on validation), averaged
over seeds (each seed re-splits the data), as the last line (one JSON object).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "examples" / "tabular_diabetes.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    a = ap.parse_args()

    out_dir = work_dir()
    rows = []
    for seed in a.seeds:
        _, m, _ = train_run(a.config, [f"seed={seed}"], out=out_dir, name=f"seed{seed}", quiet=True)
        rows.append((m["test"]["rmse"], m["baseline"]["test"]["rmse"], m["baseline"]["name"],
                     m["timings"]["fit_seconds"]))
        print(f"seed {seed}: mlp test_rmse {rows[-1][0]:.3f}  baseline ({rows[-1][2]}) {rows[-1][1]:.3f}")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    test_rmse, base_rmse = mean([r[0] for r in rows]), mean([r[1] for r in rows])
    emit({"dataset": "diabetes", "seeds": a.seeds, "test_rmse": round(test_rmse, 3),
          "baseline_rmse": round(base_rmse, 3), "ratio": round(test_rmse / base_rmse, 4),
          "train_seconds": round(mean([r[3] for r in rows]), 2), "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
