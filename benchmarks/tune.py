"""Hyperparameter search benchmark on ChnSentiCorp (luban tune with Optuna TPE + median pruning).

    python benchmarks/tune.py --data ../shared/data/chnsenticorp --trials 12

Trains the default config (examples/chnsenticorp.yaml), then searches examples/chnsenticorp_tune.yaml's space
(the first trial is the default's own values), and prints default/best validation accuracy, the best trial's test
accuracy and the wall time (one JSON line). Then both configs' final models — retrained on train + validation for the
epoch count their validation run chose, as `search.retrain` does — are tested too (`*_final_test_accuracy`).

`--cv K` scores every trial by K-fold cross-validation over train + dev instead of the dev set alone
(`search.cv_folds`; best_val_accuracy is then that cross-validated mean, default_val_accuracy stays the dev score).
A single run's test accuracy moves by a few sentences with the seed, so `--seeds N` also trains the default and the
best config with seeds 0..N-1 (each: a run selected by validation, then its retrain on train + validation) and
reports each config's mean and standard deviation over the seeds (`seeds` in the JSON line).
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, tsv_folder_overrides, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.tsv, dev.tsv, test.tsv")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--seeds", type=int, default=1, help="also train both configs with this many seeds (see above)")
    ap.add_argument("--cv", type=int, default=None, help="score trials by K-fold cross-validation over train + dev "
                    "(search.cv_folds) instead of the dev set")
    a = ap.parse_args()

    from luban.config import load_config
    from luban.lifecycle.tune import retrain_on_all, tune

    data = Path(a.data).resolve()
    out = work_dir()
    paths = tsv_folder_overrides(data)
    _, d, default_seconds = train_run(ROOT / "examples" / "chnsenticorp.yaml", paths, out=out, name="default",
                                      quiet=True)
    t1 = time.perf_counter()
    folder = tune(str(ROOT / "examples" / "chnsenticorp_tune.yaml"), a.trials, jobs=a.jobs,
                  overrides=paths + [f"output.dir={out}", "output.tensorboard=false", "search.retrain=true"]
                  + ([f"search.cv_folds={a.cv}"] if a.cv else []),
                  quiet=True)
    seconds = time.perf_counter() - t1
    s = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    best_final = json.loads((out / "chnsenticorp_tune-best" / "metrics.json").read_text(encoding="utf-8"))
    tree = load_config(ROOT / "examples" / "chnsenticorp.yaml", paths + [f"output.dir={out}"]).model_dump(mode="json")
    default_final = json.loads((retrain_on_all(tree, d["best_epoch"], "default-final", out, "default") /
                                "metrics.json").read_text(encoding="utf-8"))
    emit({"dataset": data.name, "trials": s["trials"], "complete": s["complete"], "pruned": s["pruned"],
          "default_val_accuracy": round(d["validation"]["accuracy"], 4),
          "default_test_accuracy": round(d["test"]["accuracy"], 4),
          "best_val_accuracy": round(s["best_value"], 4),
          "best_test_accuracy": round(s["best_user_attrs"]["test_accuracy"], 4),
          "default_final_test_accuracy": round(default_final["test"]["accuracy"], 4),
          "best_final_test_accuracy": round(best_final["test"]["accuracy"], 4),
          "best_params": s["best_params"], "importances": s["importances"],
          "default_seconds": round(default_seconds, 1), "seconds": round(seconds, 1),
          **({"seeds": {"default": over_seeds(ROOT / "examples" / "chnsenticorp.yaml", paths, a.seeds, out),
                        "best": over_seeds(folder / "best.yaml", paths, a.seeds, out)}} if a.seeds > 1 else {}),
          "peak_rss_mb": peak_rss_mb()})


def over_seeds(config: Path, paths: list[str], seeds: int, out: Path) -> dict:
    """Mean and standard deviation over seeds 0..seeds-1 of a config's validation-selected run (validation and test
    accuracy) and of its final model retrained on train + validation (test accuracy)."""
    import statistics

    from luban.config import load_config
    from luban.lifecycle.tune import retrain_on_all

    rows = {"val": [], "test": [], "final_test": []}
    for seed in range(seeds):
        over = paths + [f"seed={seed}"]
        name = f"{config.stem}-seed{seed}"
        _, m, _ = train_run(config, over, out=out, name=name, quiet=True)
        tree = load_config(config, over + [f"output.dir={out}"]).model_dump(mode="json")
        final = retrain_on_all(tree, m["best_epoch"], f"{name}-final", out, str(config))
        rows["val"].append(m["validation"]["accuracy"])
        rows["test"].append(m["test"]["accuracy"])
        rows["final_test"].append(json.loads((final / "metrics.json").read_text(encoding="utf-8"))["test"]["accuracy"])
    return {f"{k}_accuracy_{stat}": round(fn(v), 4) for k, v in rows.items()
            for stat, fn in (("mean", statistics.mean), ("std", statistics.stdev))} | {
        f"{k}_accuracy_runs": [round(x, 4) for x in v] for k, v in rows.items()}


if __name__ == "__main__":
    main()
