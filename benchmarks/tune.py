"""Does tuning help, starting from luban's defaults? (issue 22 §3)

    python benchmarks/tune.py [--trials 20] [--sets breast_cancer sst2 digits] [--sst2 ../shared/data/sst2]
                              [--sst2-rows 2000] [--folds 3]

For each set, a model type at luban's defaults (nothing chosen by looking at the set) and a generic search space
for that model type (examples/tabular_gbdt_tune.yaml, examples/sst2_ngram_tune.yaml):

- breast_cancer (569 rows, 30 columns) or digits (1,797 rows: 8x8 pixels as 64 columns): scikit-learn's table,
  a fresh seeded split (train 55% / validation 15% / test 30%), model gbdt;
- sst2: SST-2 (offline copy in ../shared/data/sst2), a seeded subset of --sst2-rows training sentences + 1,000
  validation sentences from train.tsv; test = the 6,735-sentence dev.tsv; model ngram_bag.

The default config is trained (selected on validation) and retrained on train + validation for the epoch (or
boosting round) count validation chose; `luban tune` searches --trials trials, each scored by K-fold
cross-validation over train + validation (search.cv_folds), and retrains its best config the same way
(search.retrain). Both final models predict the same test rows; the difference in accuracy gets a paired bootstrap
95% interval (luban.evaluate.significance). Goal: tuned >= default + 1.0 point with the interval above zero on at
least one set, and never significantly worse.

Last line (one JSON object): `best_gain` (points), `best_gain_ci_low`, `worst_gain_ci_high`, and `sets` (per set:
rows, default / tuned test accuracy, gain and its interval, the verdict, best params, seconds).
"""

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def table_split(name: str, out: Path, seed: int = 7) -> tuple[list[str], Path]:
    """A scikit-learn table (breast_cancer, digits) freshly split: 55% train / 15% validation / 30% test."""
    import sklearn.datasets

    d = getattr(sklearn.datasets, f"load_{name}")()
    idx = list(range(len(d.target)))
    random.Random(seed).shuffle(idx)
    n = len(idx)
    parts = {"train": idx[: int(0.55 * n)], "validation": idx[int(0.55 * n): int(0.70 * n)],
             "test": idx[int(0.70 * n):]}
    for split, rows in parts.items():
        with open(out / f"{name}_{split}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([f"x{j}" for j in range(d.data.shape[1])] + ["target"])
            w.writerows([[float(v) for v in d.data[i]] + [int(d.target[i])] for i in rows])
    over = [f"data.{s}={out / f'{name}_{s}.csv'}" for s in parts] + [
        "data.builtin=null", "data.columns.label=target", "data.split.stratify=true"]
    return over, out / f"{name}_test.csv"


def sst2_split(folder: Path, rows: int, out: Path, seed: int = 7) -> tuple[list[str], Path]:
    with open(folder / "train.tsv", encoding="utf-8") as f:
        header, *lines = f.read().splitlines()
    random.Random(seed).shuffle(lines)
    for split, part in (("train", lines[:rows]), ("validation", lines[rows: rows + 1000])):
        (out / f"sst2_{split}.tsv").write_text("\n".join([header, *part]) + "\n", encoding="utf-8")
    test = folder / "dev.tsv"
    return [f"data.train={out / 'sst2_train.tsv'}", f"data.validation={out / 'sst2_validation.tsv'}",
            f"data.test={test}"], test


def run_set(name: str, config: Path, over: list[str], test: Path, out: Path, trials: int, folds: int | None):
    import luban
    from luban.config import load_config
    from luban.evaluate.significance import compare_to_baseline
    from luban.lifecycle.tune import retrain_on_all, tune

    over = over + [f"output.dir={out}", "output.tensorboard=false", "evaluation.baseline=false"]
    t0 = time.perf_counter()
    cfg = load_config(config, over + [f"output.name={name}-default"])
    tree = {k: v for k, v in cfg.model_dump(mode="json").items() if k != "search"}
    default = luban.train(tree, quiet=True)
    d = json.loads((default / "metrics.json").read_text(encoding="utf-8"))
    default_final = retrain_on_all(tree, d["best_epoch"], f"{name}-default-final", out, str(config))
    t1 = time.perf_counter()
    folder = tune(str(config), trials, overrides=over + [f"output.name={name}", "search.retrain=true"]
                  + ([f"search.cv_folds={folds}"] if folds else []), quiet=True)
    seconds = time.perf_counter() - t1
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    tuned_final = out / f"{name}-best"
    a = luban.load(default_final, backend="torch").evaluate(test)
    b = luban.load(tuned_final, backend="torch").evaluate(test)
    v = compare_to_baseline(b, {"name": "default", "test": a}, "accuracy", seed=0)
    gain, (lo, hi) = 100 * v["difference"], [100 * x for x in v["ci95"]]
    row = {"model": cfg.model.type, "test_rows": v["rows"], "trials": s["trials"], "complete": s["complete"],
           "pruned": s["pruned"], "cv_folds": folds,
           "default_test_accuracy": round(a["accuracy"], 4), "tuned_test_accuracy": round(b["accuracy"], 4),
           "gain_points": round(gain, 2), "gain_ci95_points": [round(lo, 2), round(hi, 2)],
           "verdict": v["verdict"].replace("the baseline", "the default"),
           "default_val_accuracy": round(d["validation"]["accuracy"], 4), "best_cv_accuracy": round(s["best_value"], 4),
           "best_params": s["best_params"], "default_seconds": round(t1 - t0, 1), "tune_seconds": round(seconds, 1)}
    print(f"{name}: default {row['default_test_accuracy']:.4f} tuned {row['tuned_test_accuracy']:.4f} "
          f"gain {gain:+.2f} points (95% CI {lo:+.2f} … {hi:+.2f})", flush=True)
    return row


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sets", nargs="+", default=["breast_cancer", "sst2"])
    ap.add_argument("--sst2", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--sst2-rows", type=int, default=2000)
    ap.add_argument("--folds", type=int, default=3, help="search.cv_folds of every trial")
    a = ap.parse_args()

    out = work_dir()
    results = {}
    for name in a.sets:
        if name in ("breast_cancer", "digits"):
            over, test = table_split(name, out)
            config = ROOT / "examples" / "tabular_gbdt_tune.yaml"
        elif name == "sst2":
            if not (Path(a.sst2) / "train.tsv").is_file():
                print(f"sst2: {a.sst2} not found; skipped", file=sys.stderr)
                continue
            over, test = sst2_split(Path(a.sst2), a.sst2_rows, out)
            config = ROOT / "examples" / "sst2_ngram_tune.yaml"
        else:
            raise SystemExit(f"unknown set {name!r}")
        results[name] = run_set(name, config, over, test, out, a.trials, a.folds)
    gains = {n: r["gain_points"] for n, r in results.items()}
    best = max(gains, key=gains.get) if gains else None
    emit({"best_gain": gains.get(best), "best_gain_ci_low": results[best]["gain_ci95_points"][0] if best else None,
          "worst_gain_ci_high": min((r["gain_ci95_points"][1] for r in results.values()), default=None),
          "goal_met": bool(best and gains[best] >= 1.0 and results[best]["gain_ci95_points"][0] > 0
                           and all(r["gain_ci95_points"][1] >= 0 for r in results.values())),
          "trials": a.trials, "cv_folds": a.folds, "sst2_train_rows": a.sst2_rows, "sets": results,
          "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
