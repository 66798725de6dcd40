"""Tables: luban's gbdt (LightGBM, the tabular default) and its MLP beside the classical baseline (the better of
ridge / logistic regression and scikit-learn's histogram gradient boosting on validation), offline:

    python benchmarks/tabular.py [--seeds 0 1 2] [--sets diabetes wine breast_cancer movielens]
                                 [--movielens ../shared/data/ml-100k]

Sets: scikit-learn's diabetes (442 rows, regression), wine (178, 3 classes), breast_cancer (569, 2 classes), and a
larger table built from MovieLens 100k (100,000 ratings -> the rating from user age / gender / occupation / zip
region and movie year / 19 genres: regression; skipped when the folder is absent). Every seed re-splits the data.

The gbdt runs at luban's defaults (nothing chosen by looking at a set). The MLP: examples/tabular_diabetes.yaml and
examples/tabular_wine.yaml where they exist (hand-tuned there), else the wine recipe (100 epochs, patience 20).

Last line (one JSON object): `gbdt_beats_baseline` (sets where gbdt's mean test metric over seeds is better than the
baseline's), `gbdt_significant_wins` / `gbdt_significant_losses` (seed runs whose paired bootstrap verdict says so),
and `sets` (per set: rows, metric, gbdt / mlp / baseline means and per-seed figures, fit seconds).
"""

import argparse
import csv
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MLP_RECIPE = {"model.type": "mlp", "model.hidden_sizes": "[64,32]", "model.dropout": "0.1", "trainer.epochs": "100",
              "trainer.batch_size": "16", "trainer.lr": "0.003", "trainer.weight_decay": "0.01",
              "trainer.early_stopping.patience": "20"}


def movielens_table(folder: Path, dest: Path) -> Path:
    """One row per rating: user and movie side features -> rating (no ids: a table, not collaborative filtering)."""
    users = {}
    with open(folder / "u.user", encoding="latin-1") as f:
        for uid, age, gender, occupation, zipcode in (line.rstrip("\n").split("|") for line in f):
            users[uid] = (age, gender, occupation, zipcode[:1] if zipcode[:1].isdigit() else "x")
    items, genres = {}, [f"g{i}" for i in range(19)]
    with open(folder / "u.item", encoding="latin-1") as f:
        for parts in (line.rstrip("\n").split("|") for line in f):
            year = parts[2][-4:] if parts[2][-4:].isdigit() else ""
            items[parts[0]] = (year, *parts[5:24])
    with open(folder / "u.data", encoding="latin-1") as f, open(dest, "w", newline="", encoding="utf-8") as out:
        w = csv.writer(out)
        w.writerow(["age", "gender", "occupation", "zip1", "year", *genres, "rating"])
        for user, item, rating, _ in (line.split("\t") for line in f):
            w.writerow([*users[user], *items[item], rating])
    return dest


def sets(names: list[str], movielens: Path, out: Path) -> dict:
    """name -> (task, metric, data overrides, MLP overrides)"""
    builtin = lambda n, task: [f"task={task}", f"data.builtin={n}"]  # noqa: E731
    table = {
        "diabetes": ("tabular_regression", "rmse", builtin("diabetes", "tabular_regression"),
                     ["model.type=mlp"], ROOT / "examples" / "tabular_diabetes.yaml"),
        "wine": ("tabular_classification", "accuracy", builtin("wine", "tabular_classification"),
                 ["model.type=mlp"], ROOT / "examples" / "tabular_wine.yaml"),
        "breast_cancer": ("tabular_classification", "accuracy", builtin("breast_cancer", "tabular_classification"),
                          [f"{k}={v}" for k, v in MLP_RECIPE.items()], None),
    }
    if "movielens" in names and (movielens / "u.data").is_file():
        path = movielens_table(movielens, out / "movielens.csv")
        table["movielens"] = ("tabular_regression", "rmse",
                              ["task=tabular_regression", f"data.train={path}", "data.columns.label=rating",
                               "data.columns.categorical=[gender,occupation,zip1]"],
                              ["model.type=mlp", "trainer.epochs=10", "trainer.batch_size=256",
                               "trainer.lr=0.003"], None)
    elif "movielens" in names:
        print(f"movielens: {movielens} not found; skipped", file=sys.stderr)
    return {n: table[n] for n in names if n in table}


def config_for(task: str, out: Path) -> Path:
    """A minimal config: the task, a stratified 15% validation / 20% test split, the baseline on."""
    path = out / f"{task}.yaml"
    stratify = "true" if task == "tabular_classification" else "false"
    path.write_text(f"task: {task}\nseed: 0\ndata:\n  builtin: wine\n  split: {{validation: 0.15, test: 0.2, "
                    f"stratify: {stratify}}}\noutput:\n  name: bench\n", encoding="utf-8")
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sets", nargs="+", default=["diabetes", "wine", "breast_cancer", "movielens"])
    ap.add_argument("--movielens", default=str(ROOT.parent / "shared" / "data" / "ml-100k"))
    a = ap.parse_args()

    out = work_dir()
    results, beats, wins, losses = {}, 0, 0, 0
    for name, (task, metric, data, mlp, mlp_config) in sets(a.sets, Path(a.movielens), out).items():
        lower = metric == "rmse"
        rows = {"gbdt": [], "mlp": [], "baseline": [], "baseline_name": [], "verdict": [], "gbdt_fit_seconds": [],
                "mlp_fit_seconds": [], "gbdt_rounds": []}
        base_config = config_for(task, out)
        for seed in a.seeds:
            seeded = [f"seed={seed}", "evaluation.baseline=true"]
            if data[1].startswith("data.train="):
                seeded += ["data.builtin=null"]
            _, g, _ = train_run(base_config, data + seeded + ["model.type=gbdt"], out=out,
                                name=f"{name}-gbdt-{seed}", quiet=True)
            if mlp_config is not None:  # the shipped example (its own split fractions), re-seeded
                _, m, _ = train_run(mlp_config, [f"seed={seed}", "evaluation.baseline=false"], out=out,
                                    name=f"{name}-mlp-{seed}", quiet=True)
            else:
                _, m, _ = train_run(base_config, data + seeded + mlp + ["evaluation.baseline=false"], out=out,
                                    name=f"{name}-mlp-{seed}", quiet=True)
            rows["gbdt"].append(g["test"][metric])
            rows["mlp"].append(m["test"][metric])
            rows["baseline"].append(g["baseline"]["test"][metric])
            rows["baseline_name"].append(g["baseline"]["name"])
            rows["verdict"].append((g.get("vs_baseline") or {}).get("verdict"))
            rows["gbdt_fit_seconds"].append(g["timings"]["fit_seconds"])
            rows["mlp_fit_seconds"].append(m["timings"]["fit_seconds"])
            rows["gbdt_rounds"].append(g["best_epoch"])
            print(f"{name} seed {seed}: {metric} gbdt {rows['gbdt'][-1]:.4f} ({g['best_epoch']} rounds), "
                  f"mlp {rows['mlp'][-1]:.4f}, baseline ({rows['baseline_name'][-1]}) {rows['baseline'][-1]:.4f}"
                  f" — gbdt {rows['verdict'][-1]}", flush=True)
        mean = {k: statistics.fmean(rows[k]) for k in ("gbdt", "mlp", "baseline")}
        better = mean["gbdt"] < mean["baseline"] if lower else mean["gbdt"] > mean["baseline"]
        beats += better
        wins += sum(v == "beats the baseline" for v in rows["verdict"])
        losses += sum(v == "worse than the baseline" for v in rows["verdict"])
        results[name] = {"task": task, "metric": metric, "rows": g["data"]["splits"],
                         **{f"{k}_mean": round(v, 4) for k, v in mean.items()},
                         "gbdt_beats_baseline": bool(better), "mlp_config": str(mlp_config.name) if mlp_config
                         else "benchmark recipe", **{k: [round(x, 4) if isinstance(x, float) else x for x in v]
                                                    for k, v in rows.items()}}
    emit({"gbdt_beats_baseline": beats, "sets_run": len(results), "gbdt_significant_wins": wins,
          "gbdt_significant_losses": losses, "seeds": a.seeds, "sets": results, "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
