"""Recommendation: reading and splitting interactions, negatives, full-ranking metrics, every model on tiny
synthetic data, serving with fallbacks, the CLI verbs, and clear errors for bad rows."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest
import torch

import luban
from luban.cli import main
from luban.config import validate
from luban.data.interactions import (ITEM, TIME, USER, Encoded, Histories, IdMap, NegativeSampler,
                                     read_interactions, split_interactions)
from luban.errors import ConfigError, DataError
from luban.evaluate.ranking import RankingMetrics, user_metrics

from conftest import assert_no_run, assert_run_layout, deep_update

N_USERS, N_ITEMS, PER_USER = 40, 30, 10


def clustered_rows(seed: int = 0, ratings: bool = False) -> list[tuple]:
    """Two planted clusters: users u0..u19 only touch items i0..i14, users u20..u39 only items i15..i29. Each user
    has PER_USER distinct items at increasing timestamps (ties broken by file order)."""
    rng = random.Random(seed)
    rows = []
    for u in range(N_USERS):
        lo = 0 if u < N_USERS // 2 else N_ITEMS // 2
        items = rng.sample(range(lo, lo + N_ITEMS // 2), PER_USER)
        for t, i in enumerate(items):
            r = (5 if (i + u) % 3 else 2) if ratings else None
            rows.append((f"u{u}", f"i{i}", r, 1000 + 10 * t + rng.randint(0, 3)))
    rng.shuffle(rows)
    return rows


def write_interactions(path, rows, header=("user_id", "item_id", "rating", "ts"), sep=","):
    lines = [sep.join(header)] + [sep.join("" if v is None else str(v) for v in r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec_config(out_dir, name, train, model, **extra) -> dict:
    cfg = {"task": "recommendation", "seed": 3, "data": {"train": str(train)}, "model": model,
           "trainer": {"epochs": 8, "batch_size": 64, "lr": 0.02, "weight_decay": 0.0, "scheduler": "constant",
                       "num_threads": 1, "device": "cpu", "precision": "fp32", "log_every": 1000},
           "recommendation": {"k": 5, "ks": [1, 5]},
           "output": {"dir": str(out_dir), "name": name, "tensorboard": False}}
    return deep_update(cfg, extra)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec")
    return {"root": root, "train": write_interactions(root / "interactions.csv", clustered_rows())}


@pytest.fixture(scope="module")
def bpr_run(clustered):
    cfg = rec_config(clustered["root"] / "runs", "bpr", clustered["train"], {"type": "bpr", "factors": 8})
    return luban.train(cfg, quiet=True)


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_equal_hand_computed_values():
    # 6 items; user A's relevant items {1, 4}, user B's {5}; items 0 (A) and 2 (B) are seen (-inf)
    scores = torch.tensor([[-np.inf, 0.9, 0.8, 0.7, 0.6, 0.1],     # A ranks: 1,2,3,4,5 -> item1 @0, item4 @3
                           [0.5, 0.4, -np.inf, 0.3, 0.2, 0.9]])    # B ranks: 5,0,1,3,4 -> item5 @0
    m = RankingMetrics([2, 4], 6)
    m.add(scores.clone(), [np.array([1, 4]), np.array([5])])
    at2, at4 = m.result(2), m.result(4)
    ndcg_a2 = 1.0 / (1 + 1 / np.log2(3))                        # one hit at rank 0, ideal two hits
    ndcg_a4 = (1 + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert at2["hr"] == pytest.approx(1.0)
    assert at2["recall"] == pytest.approx((0.5 + 1.0) / 2)
    assert at2["ndcg"] == pytest.approx((ndcg_a2 + 1.0) / 2)
    assert at4["recall"] == pytest.approx(1.0)
    assert at4["ndcg"] == pytest.approx((ndcg_a4 + 1.0) / 2)
    assert at2["mrr"] == pytest.approx(1.0)                    # both users have a relevant item first
    assert at2["coverage"] == pytest.approx(len({1, 2, 5, 0}) / 6)   # top-2: A {1, 2}, B {5, 0}
    # a miss and a tie: ties go to the lower item index
    one = user_metrics(np.array([10]), 10)
    assert one == {"hr": 0.0, "recall": 0.0, "ndcg": 0.0, "mrr": pytest.approx(1 / 11)}
    tie = RankingMetrics([1], 3)
    tie.add(torch.tensor([[1.0, 1.0, 1.0]]), [np.array([1])])
    assert tie.result(1)["hr"] == 0.0 and tie.result(1)["mrr"] == pytest.approx(0.5)


def test_ndcg_matches_scikit_learn():
    from sklearn.metrics import ndcg_score

    rng = np.random.default_rng(0)
    scores = rng.random((5, 20))
    targets = [rng.choice(20, size=rng.integers(1, 4), replace=False) for _ in range(5)]
    m = RankingMetrics([7], 20)
    m.add(torch.tensor(scores, dtype=torch.float64), targets)
    truth = np.zeros((5, 20))
    for r, t in enumerate(targets):
        truth[r, t] = 1
    assert m.result(7)["ndcg"] == pytest.approx(ndcg_score(truth, scores, k=7), abs=1e-6)


# ------------------------------------------------------------------------------------------------ data


def _frame(rows):
    df = pd.DataFrame(rows, columns=[USER, ITEM, TIME])
    df["rating"], df["_line"] = np.nan, range(1, len(df) + 1)
    df.attrs["source"] = "mem"
    return df


def test_leave_last_out_holds_out_exactly_the_latest_interaction():
    rows = [("a", "1", 5), ("a", "2", 9), ("a", "3", 7), ("a", "4", 1),   # latest a: 2 (t=9), then 3 (t=7)
            ("b", "1", 3), ("b", "5", 3),                               # tie: the later line is the latest
            ("c", "9", 1)]                                              # a single interaction stays in train
    s = split_interactions({"train": _frame(rows), "validation": None, "test": None}, "leave_last_out", 0.1, 0.1, 0)
    test = dict(zip(s["test"][USER], s["test"][ITEM], strict=True))
    val = dict(zip(s["validation"][USER], s["validation"][ITEM], strict=True))
    assert test == {"a": "2", "b": "5"}
    assert val == {"a": "3"}                                            # b has only one left: no validation
    assert sorted(zip(s["train"][USER], s["train"][ITEM], strict=True)) == [("a", "1"), ("a", "4"), ("b", "1"),
                                                                             ("c", "9")]
    # on the clustered data: one test row per user, its timestamp the user's maximum
    df = _frame([(u, i, t) for u, i, _, t in clustered_rows()])
    s = split_interactions({"train": df, "validation": None, "test": None}, "leave_last_out", 0.1, 0.1, 0)
    assert s["test"][USER].is_unique and len(s["test"]) == N_USERS
    latest = df.groupby(USER)[TIME].max()
    assert (s["test"].set_index(USER)[TIME] == latest[s["test"][USER]]).all()


def test_ratio_splits_are_seeded_and_temporal_is_ordered():
    df = _frame([(u, i, t) for u, i, _, t in clustered_rows()])
    frames = {"train": df, "validation": None, "test": None}
    t = split_interactions(dict(frames), "temporal_ratio", 0.1, 0.2, 0)
    assert len(t["test"]) == round(0.2 * len(df)) and len(t["validation"]) == round(0.1 * len(df))
    assert t["train"][TIME].max() <= t["validation"][TIME].min() <= t["test"][TIME].min()
    a = split_interactions(dict(frames), "random_ratio", 0.1, 0.2, 5)
    b = split_interactions(dict(frames), "random_ratio", 0.1, 0.2, 5)
    c = split_interactions(dict(frames), "random_ratio", 0.1, 0.2, 6)
    assert a["test"]["_line"].tolist() == b["test"]["_line"].tolist() != c["test"]["_line"].tolist()


def test_without_timestamps_leave_last_out_holds_out_a_random_interaction_per_user():
    """No timestamp column: "latest" would be the last row in the file (each user's highest item id in a file
    sorted that way), so the split falls back to a seeded random hold-out of one interaction per user."""
    from luban.data.interactions import resolve_split

    rows = sorted(((u, i) for u, i, _, _ in clustered_rows()), key=lambda r: (r[0], int(r[1][1:])))
    df = _frame([(u, i, None) for u, i in rows])
    df[TIME] = np.nan
    frames = {"train": df, "validation": None, "test": None}
    strategy, note = resolve_split(frames, "leave_last_out")
    assert strategy == "leave_random_out" and "no timestamp column" in note and "data.columns.timestamp" in note
    assert resolve_split(frames, "temporal_ratio")[0] == "random_ratio"
    assert resolve_split(frames, "random_ratio") == ("random_ratio", None)
    assert resolve_split({"train": df, "validation": df, "test": df}, "leave_last_out") == ("leave_last_out", None)
    timed = _frame([(u, i, t) for u, i, _, t in clustered_rows()])
    assert resolve_split({"train": timed, "validation": None, "test": None}, "leave_last_out") == ("leave_last_out",
                                                                                                    None)
    a, b, c = (split_interactions(dict(frames), strategy, 0.1, 0.1, seed) for seed in (0, 0, 1))
    for s in (a, c):
        assert s["test"][USER].is_unique and s["validation"][USER].is_unique and len(s["test"]) == N_USERS
        assert len(s["train"]) + len(s["validation"]) + len(s["test"]) == len(df)
    assert a["test"]["_line"].tolist() == b["test"]["_line"].tolist() != c["test"]["_line"].tolist()
    highest = df.groupby(USER)[ITEM].agg(lambda x: max(x, key=lambda v: int(v[1:])))
    held = a["test"].set_index(USER)[ITEM]
    assert (held != highest[held.index]).mean() > 0.5   # not the file's last row per user


def test_id_and_weight_columns_are_recognised(tmp_path):
    """lastfm's userID / artistID / weight, *_id, *Id and upper-case variants; a weight column is reported as
    ignored in the console and metrics.json; leave_last_out without timestamps says what it does instead."""
    from luban.config import RecommendationData as DataConfig

    def read(header, name="x.tsv"):
        path = tmp_path / name
        path.write_text("\t".join(header) + "\n" + "1\t2\t3\n" + "1\t4\t5\n", encoding="utf-8")
        return read_interactions(path, DataConfig(train=str(path)), "auto")

    for header, user, item in [(("userID", "artistID", "weight"), "userID", "artistID"),
                               (("user_id", "artist_id", "plays"), "user_id", "artist_id"),
                               (("CustomerId", "BookId", "count"), "CustomerId", "BookId"),
                               (("USER_ID", "TRACK-ID", "playcount"), "USER_ID", "TRACK-ID"),
                               (("listenerID", "songID", "Plays"), "listenerID", "songID")]:
        f = read(header)
        assert (f.attrs["columns"][USER], f.attrs["columns"][ITEM]) == (user, item)
        assert f.attrs["weight_column"] == header[2] and f.attrs["columns"]["rating"] is None
    with pytest.raises(DataError, match=r"several columns could hold the item id \(artistID, tagID\); name it "
                                        r"with data.columns.item"):
        read(("userID", "artistID", "tagID"))

    rows = sorted(((u[1:], i[1:]) for u, i, _, _ in clustered_rows()), key=lambda r: (int(r[0]), int(r[1])))
    path = write_interactions(tmp_path / "user_artists.dat", [(u, i, 1 + int(i) % 7) for u, i in rows],
                              header=("userID", "artistID", "weight"), sep="\t")
    run = luban.train(rec_config(tmp_path / "runs", "lastfm", path, {"type": "popularity"},
                                 data={"format": "tsv"}), quiet=True)
    data = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["data"]
    assert data["split"] == "leave_random_out" and data["split_requested"] == "leave_last_out"
    assert "no timestamp column" in data["split_note"]
    assert data["weight_column"]["column"] == "weight" and data["weight_column"]["used"] is False
    assert "data.columns.rating: weight" in data["weight_column"]["note"]
    assert data["splits"]["test"] == N_USERS
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "split leave_random_out" in report and "no timestamp column" in report
    # the weight used as a rating with a threshold: no note, fewer rows
    run = luban.train(rec_config(tmp_path / "runs", "strong", path, {"type": "popularity"},
                                 data={"format": "tsv", "columns": {"rating": "weight"}},
                                 recommendation={"rating_threshold": 3, "split": "leave_random_out"}), quiet=True)
    data = json.loads((run / "metrics.json").read_text(encoding="utf-8"))["data"]
    assert "weight_column" not in data and "split_note" not in data and data["split"] == "leave_random_out"
    assert sum(data["splits"].values()) < len(rows)


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_negative_sampler_never_returns_positives(sampler):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(50), 8)
    items = rng.integers(0, 20, size=len(users))
    s = NegativeSampler(20, users, items, sampler)
    neg = s.sample(users, 5, rng)
    assert neg.shape == (len(users), 5)
    assert not s.is_positive(np.repeat(users[:, None], 5, axis=1), neg).any()
    if sampler == "popularity":  # never an item nobody interacted with
        assert np.isin(neg, items).all()


def test_histories_are_in_time_order():
    df = _frame([("a", "1", 5), ("a", "2", 1), ("b", "3", 2), ("a", "3", 3)])
    users, items = IdMap.fit(df[USER]), IdMap.fit(df[ITEM])
    h = Histories.build(Encoded.of(df, users, items), len(users))
    assert [items.ids[i] for i in h.of(users.get("a"))] == ["2", "3", "1"]


def test_movielens_files_are_read_directly(tmp_path):
    from luban.config import RecommendationData as DataConfig

    d = tmp_path / "u.data"
    d.write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n007\t377\t1\t878887116\n", encoding="utf-8")
    f = read_interactions(d, DataConfig(train=d), "auto")
    assert f[USER].tolist() == ["196", "186", "7"] and f["rating"].tolist() == [3, 3, 1]
    dat = tmp_path / "ratings.dat"
    dat.write_text("1::1193::5::978300760\n1::661::3::978302109\n", encoding="utf-8")
    f = read_interactions(dat, DataConfig(train=dat), "auto")
    assert f[ITEM].tolist() == ["1193", "661"] and f[TIME].tolist() == [978300760, 978302109]


def test_csv_dates_parquet_and_given_split_files(tmp_path):
    from luban.config import RecommendationData as DataConfig

    csv = tmp_path / "events.csv"
    csv.write_text("visitorid,itemid,event_time\n1,a,2024-01-02T10:00:00\n1,b,2024-01-01\n", encoding="utf-8")
    f = read_interactions(csv, DataConfig(train=csv), "auto")
    assert f[TIME].iloc[0] - f[TIME].iloc[1] == 34 * 3600 and f.attrs["columns"][ITEM] == "itemid"
    pq = tmp_path / "x.parquet"
    pd.DataFrame({"user": [1, 2], "item": [10, 20], "rating": [4.0, None]}).to_parquet(pq)
    f = read_interactions(pq, DataConfig(train=pq), "int")
    assert f[USER].tolist() == ["1", "2"] and np.isnan(f["rating"].iloc[1])
    # ml-100k's u1.base / u1.test as given train / test files; validation is held out of train by the strategy
    rows = clustered_rows()
    base, test = tmp_path / "u1.base", tmp_path / "u1.test"
    ids = {f"u{u}": u + 1 for u in range(N_USERS)} | {f"i{i}": i + 1 for i in range(N_ITEMS)}
    held = {r[0]: r for r in sorted(rows, key=lambda r: r[3])}           # each user's latest row
    fmt = lambda rs: "".join(f"{ids[u]}\t{ids[i]}\t3\t{t}\n" for u, i, _, t in rs)  # noqa: E731
    base.write_text(fmt([r for r in rows if held[r[0]] is not r]), encoding="utf-8")
    test.write_text(fmt(held.values()), encoding="utf-8")
    cfg = rec_config(tmp_path / "runs", "given", base, {"type": "itemknn"}, data={"test": str(test)})
    m = json.loads((luban.train(cfg, quiet=True) / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["splits"] == {"train": N_USERS * (PER_USER - 2), "validation": N_USERS, "test": N_USERS}


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("content,expect", [
    ("196\t242\t3\t881250949\nabc\t302\t3\t891717742\n",
     r"u\.data: line 2: field 'user': user id 'abc' is not an integer"),
    ("196\t242\t3\t881250949\n186\t3o2\t3\t891717742\n", r"line 2: field 'item': item id '3o2' is not an integer"),
    ("196\t242\t3\n", r"line 1: expected 4 fields"),
    ("196\t242\tgood\t881250949\n", r"line 1: field 'rating': rating 'good' is not a number"),
    ("196\t242\t3\tyesterday-ish\n", r"line 1: field 'timestamp': timestamp 'yesterday-ish' is neither a number"),
])
def test_bad_movielens_rows_name_file_line_and_field(tmp_path, content, expect):
    path = tmp_path / "u.data"
    path.write_text(content, encoding="utf-8")
    cfg = rec_config(tmp_path / "runs", "bad", path, {"type": "popularity"})
    with pytest.raises(DataError, match=expect):
        luban.train(cfg, quiet=True)
    assert_no_run(tmp_path / "runs", "bad")


def test_missing_user_and_bad_csv_rows(tmp_path):
    rows = clustered_rows()
    rows[4] = ("", rows[4][1], None, rows[4][3])
    path = write_interactions(tmp_path / "x.csv", rows)
    cfg = rec_config(tmp_path / "runs", "bad", path, {"type": "popularity"})
    with pytest.raises(DataError, match=r"x\.csv: line 6: field 'user_id': missing user id"):
        luban.train(cfg, quiet=True)
    # numeric ids asked for, a text id found
    path = write_interactions(tmp_path / "y.csv", clustered_rows())
    with pytest.raises(DataError, match=r"y\.csv: line 2: field 'user_id': user id 'u\d+' is not an integer"):
        luban.train(deep_update(cfg, {"data": {"train": str(path)}, "recommendation": {"id_type": "int"}}), quiet=True)
    # explicit feedback without ratings
    with pytest.raises(DataError, match=r"line \d+: field 'rating': missing rating"):
        luban.train(deep_update(cfg, {"data": {"train": str(path)}, "model": {"type": "mf_explicit"}}), quiet=True)
    assert_no_run(tmp_path / "runs", "bad")


def test_config_errors_name_the_yaml_path(tmp_path):
    base = {"task": "recommendation", "data": {"train": "x.csv"}}
    with pytest.raises(ConfigError, match=r"recommendation\.split: must be one of"):
        validate(deep_update(base, {"recommendation": {"split": "leave_one"}}))
    with pytest.raises(ConfigError, match=r"model\.neighbours: unknown key \(did you mean 'neighbors'\?\)"):
        validate(deep_update(base, {"model": {"type": "itemknn", "neighbours": 5}}))
    with pytest.raises(ConfigError, match="does not fit task recommendation"):
        validate(deep_update(base, {"model": {"type": "textcnn"}}))
    path = write_interactions(tmp_path / "x.csv", clustered_rows(ratings=True))
    cfg = rec_config(tmp_path / "runs", "c", path, {"type": "mf_explicit"}, recommendation={"feedback": "implicit"})
    with pytest.raises(ConfigError, match="recommendation.feedback"):
        luban.train(cfg, quiet=True)


# ------------------------------------------------------------------------------------------------ models


def _cluster_precision(run, k=5) -> float:
    p = luban.load(run)
    good = total = 0
    for u in range(N_USERS):
        lo = 0 if u < N_USERS // 2 else N_ITEMS // 2
        for it in p.recommend(f"u{u}", k=k)["items"]:
            good += lo <= int(it["item"][1:]) < lo + N_ITEMS // 2
            total += 1
    return good / total


def test_bpr_recovers_planted_clusters(bpr_run):
    m = json.loads((bpr_run / "metrics.json").read_text(encoding="utf-8"))
    assert _cluster_precision(bpr_run) >= 0.9
    assert m["test"]["hr"] > m["baseline"]["test"]["hr"]          # beats popularity on held-out items
    assert m["test"]["popularity"] == m["baseline"]["test"]       # popularity always reported beside
    assert set(m["test"]["at_k"]) == {"1", "5"} and m["main_metric"] == "ndcg"
    for f in ("processor.json", "state.safetensors", "model.safetensors"):
        assert (bpr_run / "model" / f).is_file()
    assert {"ids", "recommender"} <= set(assert_run_layout(bpr_run))


@pytest.mark.parametrize("model", [{"type": "itemknn", "neighbors": 10},
                                   {"type": "ncf", "gmf_dim": 8, "mlp_dims": [16, 8]},
                                   {"type": "two_tower", "dim": 16, "hidden": [16], "id_dropout": 0.0}])
def test_other_models_recover_clusters(clustered, model):
    extra = {"trainer": {"epochs": 15}} if model["type"] == "two_tower" else {}
    run = luban.train(rec_config(clustered["root"] / "runs", model["type"], clustered["train"], model,
                                 **extra), quiet=True)
    assert _cluster_precision(run) >= 0.9


@pytest.mark.parametrize("model", [{"type": "sasrec", "heads": 1}, {"type": "gru4rec"}], ids=["sasrec", "gru4rec"])
def test_sequential_models_learn_what_comes_next(tmp_path, model):
    # every user walks the item cycle 0 -> 1 -> ... -> 11 -> 0 from a random start
    rng = random.Random(0)
    rows = []
    for u in range(60):
        start = rng.randrange(12)
        rows += [(f"u{u}", f"i{(start + t) % 12}", None, t) for t in range(8)]
    path = write_interactions(tmp_path / "seq.csv", rows)
    cfg = rec_config(tmp_path / "runs", "seq", path, {**model, "max_length": 6, "hidden": 16, "layers": 1,
                                                      "dropout": 0.0},
                     trainer={"epochs": 40, "batch_size": 32, "lr": 0.01}, recommendation={"drop_duplicates": False})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["at_k"]["1"]["hr"] >= 0.9
    p = luban.load(run)
    nxt = p.recommend("someone-new", k=1, history="i3,i4,i5")           # unknown user: the model reads history
    assert nxt["strategy"] == "history" and nxt["items"][0]["item"] == "i6"
    from luban.compress.export import export_embeddings_run

    meta = export_embeddings_run(run, quiet=True)  # each user's history encoded: the vectors rank as the model does
    assert meta["users"] == 60 and meta["dim"] == 16 and meta["parity"]["max_abs_diff"] < 1e-4


@pytest.mark.parametrize("name", ["bpr", "bpr_nobias", "mf", "sasrec", "gru4rec", "popularity"])
def test_scores_factorize_into_user_and_item_vectors(name):
    """score(q) == queries @ catalogue.T: what an inner-product vector search reproduces (an explicit MF's mean
    and biases ride in two extra dimensions; an unknown user gets mean + item bias)."""
    from luban.models import recsys

    torch.manual_seed(0)
    model = {"bpr": lambda: recsys.BPR(5, 9, 4), "bpr_nobias": lambda: recsys.BPR(5, 9, 4, item_bias=False),
             "mf": lambda: recsys.ExplicitMF(5, 9, 4),
             "sasrec": lambda: recsys.SASRec(9, 4, 8, 1, 1, 0.0), "gru4rec": lambda: recsys.GRU4Rec(9, 4, 8, 1, 0.0),
             "popularity": lambda: recsys.Popularity(9).fit(np.array([1, 1, 2, 8]))}[name]().eval()
    if name == "mf":
        with torch.no_grad():
            model.user_bias.normal_()
            model.item_bias.normal_()
            model.mean.fill_(3.5)
    q = recsys.Query(torch.tensor([0, 3, -1 if name == "mf" else 1]), [np.array([1, 2]), np.array([4]),
                                                                        np.array([0, 8, 7, 6, 5])])
    with torch.no_grad():
        queries, catalogue = model.factorized(q)
        assert torch.allclose(queries @ catalogue.T, model.score(q), atol=1e-5)
    assert recsys.NCF(5, 9, 4, [8, 4]).factorized(q) is None


def test_export_embeddings_for_a_vector_database(bpr_run, tmp_path, capsys):
    """users.parquet · items.parquet ranks items as the model does (`recommend` without hiding seen items)."""
    import shutil
    from pathlib import Path

    run = Path(shutil.copytree(bpr_run, tmp_path / "bpr"))
    assert main(["export", str(run), "--format", "embeddings"]) in (0, None)
    assert "score = user · item" in capsys.readouterr().out
    folder = run / "model" / "embeddings"
    items, users = pd.read_parquet(folder / "items.parquet"), pd.read_parquet(folder / "users.parquet")
    assert json.loads((folder / "embeddings.json").read_text())["metric"] == "inner_product"
    assert len(users) == N_USERS and len(items) == len(set(items["item"]))
    u1 = users.set_index("user").loc["u1", "vector"]
    scores = np.stack(items["vector"]) @ u1
    top = [items["item"][i] for i in np.argsort(-scores)[:5]]
    expect = luban.load(run).recommend("u1", k=5, exclude_seen=False)
    assert top == [x["item"] for x in expect["items"]]
    assert np.allclose(np.sort(scores)[::-1][:5], [x["score"] for x in expect["items"]], atol=1e-5)


def test_gru4rec_state_ignores_left_padding():
    from luban.models.recsys import GRU4Rec

    torch.manual_seed(0)
    m = GRU4Rec(n_items=9, max_length=6, hidden=8, layers=2, dropout=0.0).eval()
    with torch.no_grad():
        short = m.encode(torch.tensor([[3, 4, 5]]))
        padded = m.encode(torch.tensor([[0, 0, 0, 3, 4, 5], [1, 2, 3, 4, 5, 6]]))  # batched with a full row
        alone = m.encode(torch.tensor([[1, 2, 3, 4, 5, 6]]))
    assert torch.allclose(padded[0, 3:], short[0], atol=1e-6) and padded[0, :3].abs().max() == 0
    assert torch.allclose(padded[1], alone[0], atol=1e-6)


def test_explicit_mf_reports_rmse_beside_item_means(tmp_path):
    path = write_interactions(tmp_path / "r.csv", clustered_rows(ratings=True))
    cfg = rec_config(tmp_path / "runs", "mf", path, {"type": "mf_explicit", "factors": 8},
                     trainer={"epochs": 30, "lr": 0.05}, recommendation={"rating_threshold": 4})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["main_metric"] == "rmse"
    assert {"rmse", "mae", "ndcg", "hr"} <= set(m["test"]) and {"rmse", "mae"} <= set(m["baseline"]["test"])
    pred = luban.load(run).predict([{"user": "u1", "item": "i3"}])[0]
    assert 2 <= pred["rating"] <= 5


def test_same_seed_same_metrics(clustered, bpr_run):
    cfg = rec_config(clustered["root"] / "runs", "bpr2", clustered["train"], {"type": "bpr", "factors": 8})
    again = luban.train(cfg, quiet=True)
    a, b = (json.loads((r / "metrics.json").read_text(encoding="utf-8"))["test"] for r in (bpr_run, again))
    assert a == b


# ------------------------------------------------------------------------------------------------ serving


def test_exclude_seen_never_recommends_seen_items(bpr_run, clustered):
    p = luban.load(bpr_run)
    df = pd.read_csv(clustered["train"], dtype=str)
    seen = df.groupby("user_id")["item_id"].apply(set)
    rows = p.recommend_all(k=N_ITEMS)
    assert len(rows) == N_USERS
    for r in rows:
        got = {x["item"] for x in r["items"]}
        assert not got & seen[r["user"]]
        assert len(got) == N_ITEMS // 2 + N_ITEMS // 2 - len(seen[r["user"]])
    shown = p.recommend("u0", k=N_ITEMS, exclude_seen=False)
    assert seen["u0"] <= {x["item"] for x in shown["items"]}
    extra = p.recommend("u0", k=N_ITEMS, history=["i29"])         # items given as history count as seen too
    assert "i29" not in {x["item"] for x in extra["items"]}


def test_unknown_users_and_items_fall_back(bpr_run):
    p = luban.load(bpr_run)
    cold = p.recommend("stranger", k=3)
    assert cold["strategy"] == "popularity" and len(cold["items"]) == 3
    warm = p.recommend("stranger", k=5, history="i20,i21,not-an-item")
    assert warm["strategy"] == "history" and warm["ignored_history"] == ["not-an-item"]
    assert all(int(x["item"][1:]) >= 15 for x in warm["items"])   # neighbours of the history's cluster
    assert {x["item"] for x in warm["items"]}.isdisjoint({"i20", "i21"})
    sim = p.similar_items("i3", k=4)
    assert len(sim["items"]) == 4 and "i3" not in {x["item"] for x in sim["items"]}
    with pytest.raises(DataError, match="unknown item 'i99'"):
        p.similar_items("i99")


def test_two_tower_scores_new_users_and_items_from_features(tmp_path):
    rows = clustered_rows()
    path = write_interactions(tmp_path / "x.csv", rows)
    users = tmp_path / "users.csv"
    users.write_text("user_id,side,age\n" + "".join(f"u{u},{'left' if u < 20 else 'right'},{20 + u}\n"
                                                     for u in range(N_USERS)), encoding="utf-8")
    items = tmp_path / "items.csv"   # i30 and i31 have features but no interactions
    items.write_text("item_id,tags,title\n" + "".join(f"i{i},{'L|x' if i < 15 or i == 30 else 'R|x'},The Item {i}\n"
                                                       for i in range(32)), encoding="utf-8")
    cfg = rec_config(tmp_path / "runs", "tt", path, {"type": "two_tower", "dim": 16, "hidden": [16],
                                                     "id_dropout": 0.5},
                     trainer={"epochs": 20},
                     recommendation={"user_features": {"path": str(users), "categorical": ["side"],
                                                       "numeric": ["age"]},
                                     "item_features": {"path": str(items), "multi_valued": {"tags": "|"},
                                                       "text": ["title"]},
                                     "negatives": {"per_positive": 4}})
    run = luban.train(cfg, quiet=True)
    p = luban.load(run)
    new = p.recommend("brand-new", k=8, features={"side": "right", "age": 50})
    assert new["strategy"] == "features"
    assert sum(int(x["item"][1:]) >= 15 and x["item"] != "i30" for x in new["items"]) >= 7
    left = p.recommend("another", k=8, features={"side": "left", "age": 25})
    top_left = {x["item"] for x in left["items"]}
    assert sum(int(i[1:]) < 15 or i == "i30" for i in top_left) >= 7
    catalogue = {x["item"] for x in p.recommend("u0", k=100, exclude_seen=False)["items"]}
    assert {"i30", "i31"} <= catalogue                                  # new items with features are scored
    from luban.compress.export import export_embeddings_run

    meta = export_embeddings_run(run, quiet=True)  # the towers' vectors (user side / temperature)
    assert meta["items"] == 32 and meta["dim"] == 16 and meta["parity"]["max_abs_diff"] < 1e-4


def test_predict_serve_and_evaluate_paths(bpr_run, clustered, tmp_path):
    p = luban.load(bpr_run)
    out = p.predict(["u1", {"user": "u2", "k": 2}, {"user": "u3", "item": "i4"}])
    assert out[0]["user"] == "u1" and len(out[1]["items"]) == 2 and "score" in out[2]
    with pytest.raises(DataError, match="needs a 'user'"):
        p.predict([{"item": "i1"}])
    m = p.evaluate(clustered["train"])   # every interaction: only the test rows are not yet seen
    saved = json.loads((bpr_run / "metrics.json").read_text(encoding="utf-8"))["test"]
    assert m["ndcg"] == pytest.approx(saved["ndcg"]) and m["evaluated"]["users"] == N_USERS
    users = tmp_path / "users.csv"
    users.write_text("user_id\nu1\nu2\nu1\n", encoding="utf-8")
    assert [r["user"] for r in p.predict_file(users)] == ["u1", "u2"]


def test_cli_recommend_and_similar_items(bpr_run, tmp_path, capsys):
    assert main(["recommend", str(bpr_run), "--user", "u1", "--user", "nobody", "--k", "3",
                 "--history", "i1,i2"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["strategy"] for x in lines] == ["model", "history"] and len(lines[0]["items"]) == 3
    out = tmp_path / "all.jsonl"
    assert main(["recommend", str(bpr_run), "--all-users", "--k", "2", "--output", str(out)]) == 0
    assert len(out.read_text(encoding="utf-8").splitlines()) == N_USERS
    assert main(["similar-items", str(bpr_run), "i1", "--k", "2"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 2
    assert main(["similar-items", str(bpr_run), "zzz"]) == 2
    assert "unknown item 'zzz'" in capsys.readouterr().err
    assert main(["recommend", str(bpr_run)]) == 2


def test_serve_recommends(bpr_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from luban.serve.app import create_app

    client = TestClient(create_app(bpr_run))
    r = client.post("/predict", json={"inputs": ["u1", {"user": "new", "history": ["i2"], "k": 3}]})
    assert r.status_code == 200
    first, second = r.json()["predictions"]
    assert first == luban.load(bpr_run).recommend("u1") and second["strategy"] == "history"
    bad = client.post("/predict", json={"inputs": [{"history": ["i2"]}]})
    assert bad.status_code == 422 and "needs a 'user'" in bad.json()["detail"]
    assert client.get("/info").json()["test_metrics"]["ndcg"] >= 0
