"""Cross-validation benchmark: 5-fold CV of examples/chnsenticorp.yaml on ChnSentiCorp's training set.

    python benchmarks/cv.py --data ../shared/data/chnsenticorp [--folds 5]

Each fold trains on 4/5 of train.tsv (its validation carved from those rows) and tests on the remaining 1/5;
prints mean_accuracy and std_accuracy (one JSON line).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.tsv")
    ap.add_argument("--folds", type=int, default=5)
    a = ap.parse_args()

    from luban.lifecycle.cv import cross_validate

    data = Path(a.data).resolve()
    out = work_dir()
    t0 = time.perf_counter()
    folder = cross_validate(str(ROOT / "examples" / "chnsenticorp.yaml"), a.folds, stratified=True,
                            overrides=[f"data.train={data / 'train.tsv'}", "data.validation=null", "data.test=null",
                                       f"output.dir={out}", "output.tensorboard=false"], quiet=True)
    cv = json.loads((folder / "cv.json").read_text(encoding="utf-8"))
    emit({"dataset": data.name, "folds": a.folds, "mean_accuracy": round(cv["mean"]["accuracy"], 4),
          "std_accuracy": round(cv["std"]["accuracy"], 4),
          "per_fold_accuracy": [round(r["accuracy"], 4) for r in cv["per_fold"]],
          "mean_f1_macro": round(cv["mean"]["f1_macro"], 4), "seconds": round(time.perf_counter() - t0, 1),
          "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
