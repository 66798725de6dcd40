"""Recommendation benchmark on MovieLens 100k: leave-last-out by timestamp, full ranking, seen items excluded, K=10.

    python benchmarks/recommendation.py --data ../shared/data/ml-100k
    python benchmarks/recommendation.py --data ../shared/data/ml-100k --config examples/movielens_bpr.yaml

Trains luban's best shipped example config (examples/movielens_sasrec.yaml by default) on u.data: each user's latest
rating (by timestamp, ties by file order) is the test item, the one before it validation (best checkpoint), the rest
train. Every test user's ranking covers all 1,682 movies with the movies the user rated before excluded. Prints
ndcg10, hr10, recall10, mrr and coverage10 beside the popularity ranking's on exactly the same users
(popularity_ndcg10, popularity_hr10), train_seconds (time in training steps; fit_seconds adds the per-epoch
validation rankings), cpu_seconds (user + system CPU time of the whole process: what the machine really spent
when other jobs share its cores) and peak_rss_mb as the last line (one JSON object). `--export-embeddings` also
writes the user and item vectors (`luban export --format embeddings`) and checks that a brute-force inner-product
search over them, seen items excluded, gives every user the top 10 `luban recommend` gives (`embeddings`).
"""

import argparse
import resource
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the ml-100k folder (u.data; u.user and u.item for two-tower)")
    ap.add_argument("--config", default=str(ROOT / "examples" / "movielens_sasrec.yaml"))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--export-embeddings", action="store_true", help="also export and check the vectors")
    a = ap.parse_args()

    data = Path(a.data)
    tree = yaml.safe_load(Path(a.config).read_text(encoding="utf-8"))
    overrides = [f"data.train={data / 'u.data'}", "recommendation.split=leave_last_out", "recommendation.k=10"]
    for role in ("user", "item"):  # feature tables the config names are taken from the same folder
        path = (tree.get("recommendation") or {}).get(f"{role}_features", {}).get("path")
        if path:
            overrides.append(f"recommendation.{role}_features.path={data / Path(path).name}")
    run, m, total = train_run(a.config, overrides + a.set)
    test, pop = m["test"], m["test"]["popularity"]
    model = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))["model"]["type"]
    emit({"dataset": "ml-100k leave-last-out, full ranking, seen excluded", "config": Path(a.config).name,
          "model": model, "parameters": m["parameters"]["total"],
          "users": test["evaluated"]["users"], "items": m["data"]["items"],
          "ndcg10": round(test["ndcg"], 4), "hr10": round(test["hr"], 4), "recall10": round(test["recall"], 4),
          "mrr": round(test["mrr"], 4), "coverage10": round(test["coverage"], 4),
          "popularity_ndcg10": round(pop["ndcg"], 4), "popularity_hr10": round(pop["hr"], 4),
          "validation_ndcg10": round(m["validation"]["ndcg"], 4),
          "epochs": m["epochs_run"], "best_epoch": m["best_epoch"], **run_figures(m, total),
          "cpu_seconds": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
          **({"embeddings": vector_search(run)} if a.export_embeddings else {})})


def vector_search(run: Path, k: int = 10) -> dict:
    """Export the vectors, then top-k per user by brute-force inner product (seen items excluded) against
    `recommend_all`: the share of users whose lists are identical, and the search's wall time."""
    import time

    import numpy as np
    import pandas as pd

    import luban
    from luban.compress.export import export_embeddings_run

    meta = export_embeddings_run(run, quiet=True)
    folder = run / "model" / "embeddings"
    users, items = pd.read_parquet(folder / "users.parquet"), pd.read_parquet(folder / "items.parquet")
    p = luban.load(run)
    expected = {r["user"]: [x["item"] for x in r["items"]] for r in p.recommend_all(k=k)}
    rec = p.task_predictor
    seen = {u: rec.history.of(rec.users.get(u)).tolist() for u in users["user"]}  # as recommend hides
    t0 = time.perf_counter()
    scores = np.stack(users["vector"]) @ np.stack(items["vector"]).T
    for r, u in enumerate(users["user"]):
        scores[r, seen[u]] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    seconds = time.perf_counter() - t0
    names = np.asarray(items["item"])
    same = sum(list(names[top[r]]) == expected[u] for r, u in enumerate(users["user"]))
    return {"users": len(users), "items": len(items), "dim": meta["dim"], "same_top10": round(same / len(users), 4),
            "max_abs_diff": meta["parity"]["max_abs_diff"], "search_seconds": round(seconds, 3)}


if __name__ == "__main__":
    main()
