"""Recommendation: user-item interactions in, ranked items out.

Data: interactions (`user,item[,rating][,timestamp]` as CSV/TSV/JSONL/Parquet, or MovieLens u.data / ratings.dat),
cleaned (rating threshold, repeated pairs, k-core), split leave-last-out / temporal / random, optional user and item
feature tables. Models: luban.models.recsys. Evaluation ranks the whole catalogue for every held-out user with the
items the user already had excluded (HR, Recall, NDCG at K, MRR, coverage; RMSE/MAE for ratings), the popularity
ranking always beside.

Serving (the predictor, the CLI `recommend` / `similar-items`, `luban serve`): a user the model was trained on is
scored by the model; anyone else falls back, in this order, to
  1. their history, when one is given (or known from the data): the model itself when it reads histories (SASRec, GRU4Rec,
     ItemKNN), else item-item cosine neighbours computed from all interactions;
  2. their features (the two-tower model), from the user feature table or given with the request;
  3. popularity.
Each answer names the strategy that produced it.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np
import torch

import luban.processor as processor
from luban.capabilities import Evaluates, Predicts, Recommends, TaskPredictor
from luban.config import RunConfig
from luban.data.interactions import (ITEM, LINE, RATING, USER, Encoded, Histories, IdMap, NegativeSampler,
                                     canonical_ids, clean_interactions, id_maps_from_state, id_maps_state, k_core,
                                     read_interactions, require_ratings, resolve_split, split_interactions,
                                     user_column)
from luban.data.readers import read_table
from luban.data.side_features import FeatureTable
from luban.errors import DataError, ExportError
from luban.evaluate.ranking import RankingMetrics, full_ranking, rating_errors
from luban.models import recsys
from luban.tasks.base import Batches, Task, to_device
from luban.models.registry import build_model
from luban.training.checkpoint import load_weights
from luban.training.progress import say

SPLITS = ("train", "validation", "test")
STRATEGIES = ("model", "history", "features", "popularity")
STATE = "state.safetensors"
EVAL_BATCH = 256


def is_explicit(cfg: RunConfig) -> bool:
    fb = cfg.recommendation.feedback
    return cfg.model.predicts_ratings if fb == "auto" else fb == "explicit"


def build_recommender(cfg: RunConfig, users: IdMap, items: IdMap, tables: dict) -> recsys.Recommender:
    """The untrained module for cfg.model (training and loading a run build it the same way)."""
    return build_model(cfg.model, cfg.task, users=users, items=items, tables=tables)





def _history_lists(h: Histories, users: np.ndarray) -> list[np.ndarray]:
    return [h.of(int(u)) for u in users]


class _Serving:
    """Scoring with the documented fallbacks, shared by evaluation (task) and serving (predictor)."""

    cfg: RunConfig
    model: recsys.Recommender
    users: IdMap
    items: IdMap
    trained: np.ndarray          # per user index: had training interactions (the model knows them)
    popularity: torch.Tensor     # per item
    fallback: recsys.ItemKNN | None
    tables: dict
    device = torch.device("cpu")

    def score(self, users: np.ndarray, history: list[np.ndarray], feats: dict | None = None,
              has_feats: np.ndarray | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """[B, n_items] scores (CPU) and the strategy of each row (see the module docstring)."""
        users = np.asarray(users, dtype=np.int64)
        n = len(users)
        known = (users >= 0) & self.trained[np.clip(users, 0, None)] if n else np.zeros(0, dtype=bool)
        has_hist = np.array([len(h) > 0 for h in history], dtype=bool)
        feat_ok = (has_feats if has_feats is not None else np.zeros(n, dtype=bool)) & self.model.reads_features
        strategy = np.where(known, "model", np.where(has_hist, "history", np.where(feat_ok, "features",
                                                                                  "popularity")))
        out = torch.empty(n, len(self.items))
        self.model.eval()
        with torch.no_grad():
            for name in STRATEGIES:
                rows = np.flatnonzero(strategy == name)
                if not len(rows):
                    continue
                hist = [history[r] for r in rows]
                if name == "popularity":
                    out[rows] = self.popularity[None].expand(len(rows), -1)
                    continue
                ids = torch.as_tensor(users[rows] if name == "model" else np.full(len(rows), -1), device=self.device)
                f = None
                if name == "features" and feats is not None:
                    f = {k: v[torch.as_tensor(rows)].to(self.device) for k, v in feats.items()}
                scorer = self.model
                if name == "history" and not self.model.reads_history:
                    scorer = self.fallback
                out[rows] = scorer.score(recsys.Query(ids, hist, f)).float().cpu()
        return out, strategy

    def user_features(self, raw_ids: list[str], given: list[dict | None] | None = None):
        """Feature tensors and a has-features mask for these users: given dicts win, then the feature table."""
        table = self.tables.get("user")
        if table is None or not self.model.reads_features:
            return None, np.zeros(len(raw_ids), dtype=bool)
        feats = table.rows_for(raw_ids)
        has = np.array([table.has(r) for r in raw_ids], dtype=bool)
        for i, g in enumerate(given or []):
            if g:
                enc = table.encode_records([g], source=f"features of user {raw_ids[i]!r}")
                for k, v in enc.items():
                    feats[k][i] = torch.from_numpy(v[0])
                has[i] = True
        return feats, has

    def ranking_metrics(self, users: np.ndarray, history: list[np.ndarray], targets: list[np.ndarray],
                        with_popularity: bool) -> tuple[dict, dict | None, dict]:
        """Full-ranking metrics (seen items excluded) for the model and optionally popularity."""
        r = self.cfg.recommendation
        ks = sorted(set(r.ks) | {r.k})
        model_m, pop_m = RankingMetrics(ks, len(self.items)), RankingMetrics(ks, len(self.items))
        counts = dict.fromkeys(STRATEGIES, 0)
        raw = [self.users.ids[u] if u >= 0 else "" for u in users]
        for s in range(0, len(users), EVAL_BATCH):
            sl = slice(s, s + EVAL_BATCH)
            feats, has = self.user_features(raw[sl])
            scores, strategy = self.score(users[sl], history[sl], feats, has)
            for name in STRATEGIES:
                counts[name] += int((strategy == name).sum())
            rows = np.repeat(np.arange(len(scores)), [len(h) for h in history[sl]])
            seen = (torch.as_tensor(rows), torch.as_tensor(np.concatenate(history[sl]) if len(rows) else rows))
            scores[seen] = -torch.inf
            model_m.add(scores, targets[sl])
            if with_popularity:
                pop = self.popularity[None].expand(len(scores), -1).clone()
                pop[seen] = -torch.inf
                pop_m.add(pop, targets[sl])
        pop_res = pop_m.result(r.k) if with_popularity else None
        return model_m.result(r.k), pop_res, counts


def _targets(split: Encoded, relevant: np.ndarray, history: Histories) -> tuple[np.ndarray, list[np.ndarray], int]:
    """Users with relevant held-out items, those items, and how many were dropped because the user already had
    them (an item already seen cannot be recommended with seen items excluded)."""
    users, items = split.users[relevant], split.items[relevant]
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    uniq, start = np.unique(users, return_index=True)
    out_users, out_targets, dropped = [], [], 0
    for u, a, b in zip(uniq, start, np.r_[start[1:], len(users)], strict=True):
        t = np.unique(items[a:b])
        seen = np.isin(t, history.of(int(u)))
        dropped += int(seen.sum())
        if (~seen).any():
            out_users.append(int(u))
            out_targets.append(t[~seen])
    return np.asarray(out_users, dtype=np.int64), out_targets, dropped


# ------------------------------------------------------------------------------------------------ training side


class RecommendationTask(Task, _Serving):
    name = "recommendation"

    def __init__(self, cfg: RunConfig):
        super().__init__(cfg)
        self.explicit = is_explicit(cfg)
        self.main_metric, self.mode = ("rmse", "min") if cfg.model.predicts_ratings else ("ndcg", "max")
        self._popularity_results: dict = {}
        self._popularity_at_k: dict = {}

    # data --------------------------------------------------------------------------------------------------
    def read_frames(self):
        cfg, r = self.cfg, self.cfg.recommendation
        frames = {s: read_interactions(getattr(cfg.data, s), cfg.data, r.id_type) if getattr(cfg.data, s) else None
                  for s in SPLITS}
        if cfg.data.train_limit is not None and cfg.data.train_limit < len(frames["train"]):
            attrs = frames["train"].attrs
            frames["train"] = frames["train"].iloc[: cfg.data.train_limit].reset_index(drop=True)
            frames["train"].attrs = attrs
        int_ids = frames["train"].attrs["int_ids"]
        for role in ("user", "item"):
            t = getattr(r, f"{role}_features")
            use = t.path is not None and cfg.model.reads_features
            if t.path is not None and not use:
                print(f"note: recommendation.{role}_features is only used by the two_tower model; ignored",
                      flush=True)
            frames[f"{role}_features"] = FeatureTable.read(t, role, int_ids) if use else None
        return frames

    def prepare(self, frames):
        cfg, r = self.cfg, self.cfg.recommendation
        self.tables = {"user": frames.pop("user_features", None), "item": frames.pop("item_features", None)}
        self.int_ids = frames["train"].attrs["int_ids"]
        for split, frame in frames.items():
            if frame is None:
                continue
            if self.explicit:
                require_ratings(frame, "feedback: explicit")
            elif r.rating_threshold is not None:
                require_ratings(frame, "recommendation.rating_threshold")
            rows_in = len(frame)
            frame, dropped = clean_interactions(frame, None if self.explicit else r.rating_threshold,
                                                r.drop_duplicates)
            if split == "train" and (r.min_user_interactions > 1 or r.min_item_interactions > 1):
                frame, n = k_core(frame, r.min_user_interactions, r.min_item_interactions)
                if n:
                    dropped["users/items below the minimum interactions (k-core)"] = n
            if len(frame) == 0:
                raise DataError(f"{frame.attrs['source']}: no interactions left after cleaning ({dropped})")
            frames[split] = frame
            self.cleaning.append({"split": split, "source": frame.attrs["source"], "rows_in": rows_in,
                                  "dropped": dropped})
            if dropped:
                say(f"cleaning {frame.attrs['source']}: {rows_in} rows, dropped "
                    + ", ".join(f"{n} {why}" for why, n in dropped.items()))
        self.split, self.split_note = resolve_split(frames, r.split)
        if self.split_note:
            print(f"note: {self.split_note}", flush=True)
        self.weight_column = weight = frames["train"].attrs.get("weight_column")
        self.weight_note = None if weight is None else (
            f"column {weight!r} (a per-row weight or count) is ignored: every row counts as one interaction. To "
            f"keep only strong interactions, set data.columns.rating: {weight} with recommendation.rating_threshold")
        if self.weight_note:
            print(f"note: {self.weight_note}", flush=True)
        sp = cfg.data.split
        splits = split_interactions(frames, self.split, sp.validation, sp.test, sp.seed if sp.seed is not None
                                    else cfg.seed)
        items = [splits[s][ITEM] for s in SPLITS]
        if self.tables["item"] is not None:  # items with features but no interactions can still be recommended
            items.append(self.tables["item"].ids)
        self.users = IdMap.fit(*[splits[s][USER] for s in SPLITS])
        self.items = IdMap.fit(*items)
        self.sources = {s: f.attrs.get("source") for s, f in splits.items()}
        self.data = {s: Encoded.of(f, self.users, self.items) for s, f in splits.items()}
        nu = len(self.users)
        train = self.data["train"]
        self.train_history = Histories.build(train, nu)
        self.trained = self.train_history.lengths() > 0
        self.popularity = torch.from_numpy(np.bincount(train.items, minlength=len(self.items)).astype(np.float32))
        self.fallback = recsys.ItemKNN(len(self.items), 100).fit(train.users, train.items, nu)
        self.sampler = NegativeSampler(len(self.items), train.users, train.items, r.negatives.sampler,
                                       r.negatives.popularity_exponent)
        if self.explicit:
            ratings = train.ratings.astype(np.float64)
            self.rating_range = (float(ratings.min()), float(ratings.max()))
            self.item_means = self._item_means(train)
        # evaluation sets: validation ranks against train; test against train + validation
        self.eval_sets = {}
        for split, before in (("validation", ["train"]), ("test", ["train", "validation"])):
            hist = Histories.build(Encoded.concat([self.data[s] for s in before]), nu)
            d = self.data[split]
            relevant = np.ones(len(d), dtype=bool)
            if self.explicit and r.rating_threshold is not None:
                relevant = d.ratings >= r.rating_threshold
            users, targets, dropped = _targets(d, relevant, hist)
            if len(users) == 0:
                raise DataError(f"{self.sources[split]}: no {split} user has a held-out item to rank")
            self.eval_sets[split] = {"users": users, "targets": targets, "history": hist, "dropped_seen": dropped}
        self.seq = self._sequences() if cfg.model.sequential else None

    def _item_means(self, train: Encoded, shrink: float = 5.0) -> np.ndarray:
        mu = float(train.ratings.mean())
        sums = np.bincount(train.items, weights=train.ratings, minlength=len(self.items))
        counts = np.bincount(train.items, minlength=len(self.items))
        return (sums + shrink * mu) / (counts + shrink)

    def _sequences(self) -> dict:
        """Training windows for sequential models: each user's latest max_length + 1 training items."""
        L = self.cfg.model.max_length
        h = self.train_history
        xs, ys, owners = [], [], []
        for u in range(h.n_users):
            s = h.of(u)
            if len(s) < 2:
                continue
            w = s[-(L + 1):]
            xs.append(w[:-1])
            ys.append(w[1:])
            owners.append(u)
        if not xs:
            raise DataError(f"{self.sources['train']}: no user has two training interactions; a sequential model "
                            "needs histories")
        x = torch.zeros(len(xs), L, dtype=torch.long)
        y = torch.zeros(len(xs), L, dtype=torch.long)
        for r, (a, b) in enumerate(zip(xs, ys, strict=True)):
            x[r, L - len(a):] = torch.as_tensor(a) + 1
            y[r, L - len(b):] = torch.as_tensor(b) + 1
        return {"x": x, "y": y, "users": np.asarray(owners, dtype=np.int64)}

    def data_summary(self):
        n = sum(len(d) for d in self.data.values())
        out = {"splits": {s: len(d) for s, d in self.data.items()}, "unit": "interactions",
               "users": len(self.users), "items": len(self.items), "interactions": n,
               "density": n / max(1, len(self.users) * len(self.items)), "split": self.split,
               "feedback": "explicit" if self.explicit else "implicit", "sources": self.sources,
               "evaluated_users": {s: len(e["users"]) for s, e in self.eval_sets.items()},
               "cleaning": self.cleaning}
        if self.split_note:
            out |= {"split_requested": self.cfg.recommendation.split, "split_note": self.split_note}
        if self.weight_note:
            out["weight_column"] = {"column": self.weight_column, "used": False, "note": self.weight_note}
        dropped = {s: e["dropped_seen"] for s, e in self.eval_sets.items() if e["dropped_seen"]}
        if dropped:
            out["held_out_items_already_seen"] = dropped
        for role, t in self.tables.items():
            if t is not None:
                out[f"{role}_features"] = {"rows": len(t.ids), **{k: v for k, v in t.spec.items() if v}}
        return out

    # model and training ------------------------------------------------------------------------------------
    def build_model(self):
        model = build_recommender(self.cfg, self.users, self.items, self.tables)
        train = self.data["train"]
        if isinstance(model, recsys.Popularity):
            model.fit(train.items)
        elif isinstance(model, recsys.ItemKNN):
            model.fit(train.users, train.items, len(self.users))
        elif isinstance(model, recsys.ExplicitMF):
            model.set_ratings(train.ratings)
        self.model = model
        return model

    def train_step(self):
        """Popularity and ItemKNN are computed, not trained: no training loop."""
        return None if self.cfg.model.computed else super().train_step()

    def train_batches(self, epoch):
        kind, bs = type(self.model).batches, self.cfg.trainer.batch_size
        rng = np.random.default_rng([self.cfg.seed, epoch])
        if kind == "sequences":
            seq = self.seq
            perm = rng.permutation(len(seq["x"]))
            neg = None
            if self.cfg.model.loss == "bce":
                owners = np.repeat(seq["users"][:, None], seq["x"].shape[1], axis=1).ravel()
                neg = torch.from_numpy(self.sampler.sample(owners, 1, rng).reshape(seq["x"].shape))

            def collate(idx):
                t = torch.as_tensor(idx)
                b = {"x": seq["x"][t], "y": seq["y"][t], "size": int((seq["y"][t] > 0).sum())}
                if neg is not None:
                    b["neg"] = neg[t]
                return b

            return Batches([perm[i:i + bs].tolist() for i in range(0, len(perm), bs)], collate)
        train = self.data["train"]
        perm = rng.permutation(len(train))
        cols = {"user": torch.from_numpy(train.users[perm]), "item": torch.from_numpy(train.items[perm]),
                "rating": torch.from_numpy(train.ratings[perm].astype(np.float32))}
        if kind == "pairs":
            cols = {"user": cols["user"], "pos": cols["item"],
                    "neg": torch.from_numpy(self.sampler.sample(train.users[perm],
                                                                self.cfg.recommendation.negatives.per_positive, rng))}

        def collate_rows(span):
            a, b = span[0], span[-1] + 1
            return {**{k: v[a:b] for k, v in cols.items()}, "size": b - a}

        return Batches([list(range(i, min(len(perm), i + bs))) for i in range(0, len(perm), bs)], collate_rows)

    def loss(self, model, batch):
        return model.loss(to_device(batch, self.device))

    # evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, model, split, detailed=False):
        self.model = model
        e = self.eval_sets[split]
        history = _history_lists(e["history"], e["users"])
        res, pop, counts = self.ranking_metrics(e["users"], history, e["targets"], with_popularity=detailed)
        if self.explicit:
            res.update(self._rating_errors(model, split))
        if not detailed:
            return {k: v for k, v in res.items() if isinstance(v, float)}
        self._popularity_at_k[split] = pop["at_k"]
        pop = {k: v for k, v in pop.items() if isinstance(v, float)}
        if self.explicit:
            pop.update(self._rating_errors(None, split))
        self._popularity_results[split] = pop
        return {**res, "popularity": pop, "strategies": counts,
                "evaluated": {"users": len(e["users"]), "k": self.cfg.recommendation.k,
                              "held_out_items": int(sum(len(t) for t in e["targets"]))}}

    def _rating_errors(self, model, split) -> dict:
        d = self.data[split]
        if model is None:  # the baseline: shrunk item means
            pred = self.item_means[d.items]
        else:
            users = np.where(self.trained[d.users], d.users, -1)
            with torch.no_grad():
                pred = model.predict(torch.as_tensor(users, device=self.device),
                                     torch.as_tensor(d.items, device=self.device)).float().cpu().numpy()
        return rating_errors(np.clip(pred, *self.rating_range), d.ratings)

    def baseline(self):
        if not self._popularity_results:
            return None
        name = "popularity (most interacted items in training)"
        if self.explicit:
            name += "; ratings: item means"
        return {"name": name, **{s: self._popularity_results[s] for s in ("validation", "test")}}

    # saving ------------------------------------------------------------------------------------------------
    def save(self, folder, model):
        """Id maps, the serving state (every interaction, so seen items and histories are complete; popularity
        and the history fallback from all of them) and the feature tables."""
        parts = [self.data[s] for s in SPLITS]
        allx = Encoded.concat(parts)
        codes = np.concatenate([np.full(len(p), i, dtype=np.uint8) for i, p in enumerate(parts)])
        order = np.lexsort((allx.lines, codes, allx.times, allx.users))
        nu = len(self.users)
        indptr = np.r_[0, np.cumsum(np.bincount(allx.users, minlength=nu))].astype(np.int64)
        state = {"history_indptr": indptr, "history_items": allx.items[order].astype(np.int64),
                 "history_split": codes[order], "trained": self.trained.astype(np.uint8),
                 "popularity": np.bincount(allx.items, minlength=len(self.items)).astype(np.float32)}
        if not model.reads_history:
            knn = recsys.ItemKNN(len(self.items), 100).fit(allx.users, allx.items, nu)
            state |= {"knn_neighbors": knn.neighbors.numpy(), "knn_weights": knn.weights.numpy()}
        from safetensors.numpy import save_file

        save_file(state, str(folder / STATE))
        meta = {"explicit": self.explicit, "rating_range": getattr(self, "rating_range", None),
                "n_users": nu, "n_items": len(self.items)}
        processor.save(folder, self.cfg.task, assets=(STATE,), recommender=meta,
                       ids=id_maps_state(self.users, self.items, self.int_ids),
                       **{f"{role}_features": t for role, t in self.tables.items()})

    def report_sections(self, workdir, final):
        return [recommendation_report(final, self._popularity_at_k.get("test", {}), self.data_summary(),
                                      self._examples(final))]

    def _examples(self, final, n: int = 3) -> list[dict]:
        """A few test users: their latest items, the top recommendations and the held-out item(s)."""
        e = self.eval_sets["test"]
        name = lambda i: self.items.ids[i]  # noqa: E731
        out = []
        users = e["users"][:n]
        history = _history_lists(e["history"], users)
        scores, strategy = self.score(users, history, *self.user_features([self.users.ids[u] for u in users]))
        for r, u in enumerate(users):
            scores[r, torch.as_tensor(history[r])] = -torch.inf
            top = full_ranking(scores[r:r + 1])[0, : self.cfg.recommendation.k].tolist()
            held = set(e["targets"][r].tolist())
            out.append({"user": self.users.ids[u], "recent": [name(i) for i in history[r][-5:]],
                        "recommended": [(name(i), i in held) for i in top],
                        "held_out": [name(i) for i in e["targets"][r][:5]], "strategy": str(strategy[r])})
        return out


def recommendation_report(final: dict, pop_at_k: dict, data: dict, examples: list[dict]) -> str:
    E = html.escape
    test = final.get("test", {})
    pop = test.get("popularity", {})
    rows = []
    for k, m in test.get("at_k", {}).items():
        p = pop_at_k.get(k, {})
        rows.append(f"<tr><td>{E(k)}</td>" + "".join(f"<td>{m[x]:.4f}</td><td class=muted>{p.get(x, float('nan')):.4f}"
                                                     "</td>" for x in ("hr", "recall", "ndcg", "coverage")) + "</tr>")
    head = "".join(f"<th>{x}</th><th class=muted>popularity</th>" for x in ("HR", "Recall", "NDCG", "coverage"))
    parts = ["<h2>Ranking at each cutoff (test, full catalogue, seen items excluded)</h2>",
             f"<table><tr><th>K</th>{head}</tr>" + "".join(rows) + "</table>",
             f"<p>MRR {test.get('mrr', 0):.4f} (popularity {pop.get('mrr', 0):.4f}) · "
             f"{test.get('evaluated', {}).get('users', 0)} test users ranked against {data['items']} items · "
             "served by: " + ", ".join(f"{k} {v}" for k, v in test.get("strategies", {}).items() if v) + "</p>",
             f"<p class=muted>{data['users']} users · {data['items']} items · {data['interactions']} interactions "
             f"(density {data['density']:.4f}) · {E(data['feedback'])} feedback · split {E(data['split'])}</p>"]
    parts += [f"<p class=muted>note: {E(data[k] if k == 'split_note' else data[k]['note'])}</p>"
              for k in ("split_note", "weight_column") if k in data]
    if examples:
        cells = []
        for ex in examples:
            recs = ", ".join(f"<b>{E(str(i))}</b>" if hit else E(str(i)) for i, hit in ex["recommended"])
            cells.append(f"<tr><td class=l>{E(ex['user'])}</td><td class=l>{E(', '.join(map(str, ex['recent'])))}"
                         f"</td><td class=l>{recs}</td><td class=l>{E(', '.join(map(str, ex['held_out'])))}</td>"
                         f"<td class=l>{E(ex['strategy'])}</td></tr>")
        parts.append("<h2>Example test users</h2><p class=muted>bold: a held-out item that was recommended</p>"
                     "<table><tr><th class=l>user</th><th class=l>latest items</th><th class=l>recommended</th>"
                     "<th class=l>held out</th><th class=l>strategy</th></tr>" + "".join(cells) + "</table>")
    return "".join(parts)


# ------------------------------------------------------------------------------------------------ inference side


class RecommendationPredictor(TaskPredictor, _Serving, Predicts, Evaluates, Recommends):
    input_kind = "json"  # what the server sends predict(): see TaskPredictor.capabilities
    task = "recommendation"

    def __init__(self, cfg, folder, device):
        super().__init__(cfg, folder, device)
        from safetensors.numpy import load_file

        saved = processor.load(folder)
        self.users, self.items, self.int_ids = id_maps_from_state(saved["ids"])
        self.meta = saved["recommender"]
        state = load_file(str(folder / STATE))
        self.history = Histories(state["history_indptr"], state["history_items"])
        self.history_split = state["history_split"]
        self.trained = state["trained"].astype(bool)
        self.popularity = torch.from_numpy(state["popularity"])
        self.fallback = None
        if "knn_neighbors" in state:
            self.fallback = recsys.ItemKNN(len(self.items), state["knn_neighbors"].shape[1])
            self.fallback.neighbors.copy_(torch.from_numpy(state["knn_neighbors"]))
            self.fallback.weights.copy_(torch.from_numpy(state["knn_weights"]))
        self.tables = {role: FeatureTable.from_state(saved[f"{role}_features"], folder, f"{role}_features")
                       if f"{role}_features" in saved else None for role in ("user", "item")}
        self.model = build_recommender(cfg, self.users, self.items, self.tables)
        load_weights(self.model, folder)
        self.model.to(device).eval()

    # ids -----------------------------------------------------------------------------------------------------
    def _canon(self, raw) -> str:
        s = str(raw).strip()
        if self.int_ids:
            try:
                return str(int(s))
            except ValueError:
                return s
        return s

    def _item_indexes(self, items) -> tuple[np.ndarray, list[str]]:
        """Known item indexes and the ids that are not in the catalogue (ignored)."""
        if isinstance(items, str):
            items = [t for t in items.split(",") if t.strip()]
        idx, unknown = [], []
        for it in items or []:
            i = self.items.get(self._canon(it))
            (idx.append(i) if i is not None else unknown.append(str(it)))
        return np.asarray(idx, dtype=np.int64), unknown

    # recommending ------------------------------------------------------------------------------------------
    def recommend(self, user, k: int | None = None, history=None, exclude_seen: bool | None = None,
                  features: dict | None = None) -> dict:
        """Top-k items for one user (known or not); `history`: items the user just interacted with (appended to
        what the run knows); `features`: user features for a new user (two-tower)."""
        return self.recommend_many([{"user": user, "history": history, "features": features}], k, exclude_seen)[0]

    def recommend_many(self, requests: list[dict], k: int | None = None,
                       exclude_seen: bool | None = None) -> list[dict]:
        r = self.cfg.recommendation
        k = k or r.k
        if k <= 0:
            raise DataError(f"k must be > 0 (got {k})")
        exclude = r.exclude_seen if exclude_seen is None else exclude_seen
        out = []
        for s in range(0, len(requests), EVAL_BATCH):
            chunk = requests[s:s + EVAL_BATCH]
            raw = [self._canon(q["user"]) for q in chunk]
            users = np.array([self.users.get(u) if self.users.get(u) is not None else -1 for u in raw], dtype=np.int64)
            history, ignored = [], []
            for q, u in zip(chunk, users, strict=True):
                extra, unknown = self._item_indexes(q.get("history"))
                history.append(np.concatenate([self.history.of(int(u)), extra]))
                ignored.append(unknown)
            feats, has = self.user_features(raw, [q.get("features") for q in chunk])
            scores, strategy = self.score(users, history, feats, has)
            for row in range(len(chunk)):
                if exclude and len(history[row]):
                    scores[row, torch.as_tensor(history[row])] = -torch.inf
                top = full_ranking(scores[row:row + 1])[0, :k]
                vals = scores[row, top]
                keep = torch.isfinite(vals)
                res = {"user": raw[row], "strategy": str(strategy[row]),
                       "items": [{"item": self.items.ids[i], "score": round(float(v), 6)}
                                 for i, v in zip(top[keep].tolist(), vals[keep].tolist(), strict=True)]}
                if ignored[row]:
                    res["ignored_history"] = ignored[row]
                out.append(res)
        return out

    def recommend_every_user(self, k: int | None = None, exclude_seen: bool | None = None):
        """Recommendations for every user in the run, in id order (a generator of dicts)."""
        for s in range(0, len(self.users), EVAL_BATCH):
            yield from self.recommend_many([{"user": u} for u in self.users.ids[s:s + EVAL_BATCH]], k, exclude_seen)

    def similar_items(self, item, k: int | None = None) -> dict:
        k = k or self.cfg.recommendation.k
        raw = self._canon(item)
        i = self.items.get(raw)
        if i is None:
            raise DataError(f"unknown item {str(item)!r}: not in this run's catalogue of {len(self.items)} items")
        if isinstance(self.model, recsys.ItemKNN) or (self.model.item_vectors() is None and self.fallback):
            knn = self.model if isinstance(self.model, recsys.ItemKNN) else self.fallback
            nb, w = knn.similar(i, k)
            how = "item-item cosine over users"
        else:
            with torch.no_grad():
                v = torch.nn.functional.normalize(self.model.item_vectors().float().cpu(), dim=1)
                sim = v @ v[i]
            sim[i] = -torch.inf
            top = full_ranking(sim[None])[0, :k]
            nb, w = top.numpy(), sim[top].numpy()
            how = "cosine of the model's item embeddings"
        return {"item": raw, "strategy": how,
                "items": [{"item": self.items.ids[j], "score": round(float(s), 6)} for j, s in zip(nb, w, strict=True)]}

    def export_embeddings(self, folder: Path) -> dict:
        """Vectors for a vector database: items.parquet (item, vector) and users.parquet (user, vector) with the
        model's score(user, item) = user vector · item vector, for the users it was trained on (a sequence model's
        user vector encodes the user's history as the run holds it). `recommend` also hides items already seen; an
        inner-product search returns them too. Checked against the model's own scores on the first users."""
        import pandas as pd

        users = np.flatnonzero(self.trained)
        queries, catalogue, worst, scale = [], None, 0.0, 0.0
        self.model.eval()
        with torch.no_grad():
            for s in range(0, len(users), EVAL_BATCH):
                idx = users[s:s + EVAL_BATCH]
                q = recsys.Query(torch.as_tensor(idx, device=self.device), [self.history.of(int(u)) for u in idx])
                pair = self.model.factorized(q)
                if pair is None:
                    raise ExportError(f"model.type {self.cfg.model.type} scores each user-item pair jointly: it has "
                                      "no vectors to export (bpr, explicit_mf, two_tower, sasrec and gru4rec do)")
                queries.append(pair[0].detach().float().cpu())
                catalogue = pair[1].detach().float().cpu()
                if s == 0:
                    ref = self.model.score(q).float().cpu()
                    worst = float((queries[0] @ catalogue.T - ref).abs().max())
                    scale = float(ref.abs().max())
        if catalogue is None:
            raise ExportError(f"{self.folder}: the run knows no trained users")
        if worst > 1e-3 * max(1.0, scale):
            raise ExportError(f"the exported vectors do not reproduce the model's scores (max |Δ| {worst:.3g})")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"item": [str(i) for i in self.items.ids], "vector": list(catalogue.numpy())}).to_parquet(
            folder / "items.parquet", index=False)
        pd.DataFrame({"user": [str(self.users.ids[u]) for u in users],
                      "vector": list(torch.cat(queries).numpy())}).to_parquet(folder / "users.parquet", index=False)
        meta = {"model": self.cfg.model.type, "metric": "inner_product", "dim": int(catalogue.shape[1]),
                "users": int(len(users)), "items": len(self.items),
                "parity": {"max_abs_diff": worst, "score_scale": scale, "users": int(min(len(users), EVAL_BATCH))}}
        (folder / "embeddings.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        return meta

    def score_pairs(self, pairs: list[dict]) -> list[dict]:
        """{user, item} -> the model's score (a predicted rating for explicit models)."""
        out = []
        for p in pairs:
            rec = self.recommend_many([{"user": p["user"], "history": p.get("history")}], k=len(self.items),
                                      exclude_seen=False)[0]
            i = self.items.get(self._canon(p["item"]))
            if i is None:
                raise DataError(f"unknown item {str(p['item'])!r}: not in this run's catalogue")
            score = next(x["score"] for x in rec["items"] if x["item"] == self.items.ids[i])
            res = {"user": rec["user"], "item": self.items.ids[i], "score": score, "strategy": rec["strategy"]}
            if self.meta.get("explicit") and self.meta.get("rating_range"):
                res["rating"] = round(float(np.clip(score, *self.meta["rating_range"])), 4)
            out.append(res)
        return out

    # Predictor interface -----------------------------------------------------------------------------------
    def predict_inputs(self, inputs, k: int | None = None, top_k: int | None = None, **_) -> list[dict]:
        """Users (ids, or dicts {user, history, features, k, exclude_seen}) -> recommendations; dicts with an
        `item` -> that pair's score."""
        if isinstance(inputs, (str, int, dict)):
            inputs = [inputs]
        out = []
        for n, q in enumerate(inputs):
            if isinstance(q, dict):
                if "user" not in q:
                    raise DataError(f"input {n + 1}: a request needs a 'user' (any id; unknown users get the "
                                    "fallback)")
                if "item" in q:
                    out += self.score_pairs([q])
                else:
                    out += self.recommend_many([q], q.get("k") or k or top_k, q.get("exclude_seen"))
            elif isinstance(q, (str, int)):
                out += self.recommend_many([{"user": q}], k or top_k)
            else:
                raise DataError(f"input {n + 1}: expected a user id or a {{user, history}} mapping, found "
                                f"{type(q).__name__}")
        return out

    def read_inputs(self, path):
        """The distinct users of a file (its user column, or its only column)."""
        d = self.cfg.data
        frame = read_table(Path(path), d.format, d.header, d.delimiter, d.quoting, d.encoding_for(path))
        cols = [c for c in frame.columns if c != LINE]
        col = user_column(frame, d.columns, d.header) or cols[0]
        return list(dict.fromkeys(canonical_ids(frame[col], frame[LINE].to_numpy(), str(path), str(col), "user",
                                                False)))

    def evaluate_file(self, path) -> dict:
        """Rank the whole catalogue for every user in a file of held-out interactions, excluding the items each
        user had in training and validation; unknown items are skipped (with a count)."""
        r = self.cfg.recommendation
        frame = read_interactions(Path(path), self.cfg.data, r.id_type)
        if self.meta.get("explicit"):
            require_ratings(frame, "evaluating ratings")
        users = self.users.encode([self._canon(u) for u in frame[USER]])
        items = self.items.encode([self._canon(i) for i in frame[ITEM]])
        known_item = items >= 0
        if not known_item.any():
            raise DataError(f"{path}: none of its items is in this run's catalogue")
        ratings = frame[RATING].to_numpy(dtype=np.float32)
        before = self.history_split <= 1   # train + validation entries
        counts = np.bincount(self.history.user_index()[before], minlength=len(self.users))
        hist = Histories(np.r_[0, np.cumsum(counts)], self.history.items[before])
        # unknown users become one pseudo-user each (no history: popularity)
        new_users = {}
        uidx = users.copy()
        for j in np.flatnonzero(users < 0):
            uidx[j] = -1 - new_users.setdefault(frame[USER].iloc[j], len(new_users))
        d = Encoded(uidx[known_item], items[known_item], ratings[known_item], np.zeros(int(known_item.sum())),
                    frame[LINE].to_numpy()[known_item])
        relevant = np.ones(len(d), dtype=bool)
        if self.meta.get("explicit") and r.rating_threshold is not None:
            relevant = d.ratings >= r.rating_threshold
        eval_users, targets, dropped = _targets(d, relevant, hist)
        history = [hist.of(int(u)) if u >= 0 else np.zeros(0, dtype=np.int64) for u in eval_users]
        res, pop, counts = self.ranking_metrics(np.where(eval_users >= 0, eval_users, -1), history, targets, True)
        out = {**res, "popularity": {k: v for k, v in pop.items() if isinstance(v, float)}, "strategies": counts,
               "evaluated": {"users": len(eval_users), "k": r.k, "held_out_items": int(sum(map(len, targets))),
                             "skipped_unknown_items": int((~known_item).sum()), "skipped_already_seen": dropped}}
        if self.meta.get("explicit"):
            u = torch.as_tensor(np.where((d.users >= 0) & self.trained[np.clip(d.users, 0, None)], d.users, -1))
            with torch.no_grad():
                pred = self.model.predict(u.to(self.device), torch.as_tensor(d.items, device=self.device))
            out.update(rating_errors(np.clip(pred.cpu().numpy(), *self.meta["rating_range"]), d.ratings))
        return out
