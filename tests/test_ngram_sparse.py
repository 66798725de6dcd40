"""The n-gram model at scale: sparse gradients and lazy Adam (a step touches only the batch's rows), bounded hashing,
max_features, and NumPy n-gram keys that are scikit-learn's n-grams."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from luban.config import TrainerConfig
from luban.data.ngrams import NgramFeaturizer
from luban.models.ngram_bag import NgramBag
from luban.training.optim import LazyAdam, build_optimizer, clip_grad_norm

TEXTS = ["这个手机非常好", "那个酒店真差啊", "今天的服务特别好", "我的电脑十分差呢", "好 好 GOOD  day", "差", ""]
LABELS = [1, 0, 1, 0, 1, 0, 1]


def _batch_step(model, opt, ids, weights, labels):
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(ids, weights), labels).backward()
    opt.step()


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adagrad", "sgd"])
def test_a_step_touches_only_the_batch_rows(optimizer):
    torch.manual_seed(0)
    model = NgramBag(1000, 3, embedding_dim=0, pad_id=999)
    with torch.no_grad():
        model.embed.weight.normal_()
        model.embed.weight[999] = 0
    wd = 0.01 if optimizer.startswith("adam") else 0.0  # torch's sparse Adagrad / SGD take no weight decay
    cfg = TrainerConfig(optimizer=optimizer, lr=0.1, weight_decay=wd, momentum=0.0)
    opt = build_optimizer(model, cfg)
    ids = torch.tensor([[3, 7, 7, 999], [10, 3, 999, 999]])
    weights = torch.tensor([[0.5, 0.2, 0.3, 0.0], [1.0, 0.1, 0.0, 0.0]])
    before = model.embed.weight.detach().clone()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(ids, weights), torch.tensor([0, 2])).backward()
    grad = model.embed.weight.grad
    assert grad.is_sparse  # the gradient names the batch's rows, not the table
    assert set(grad.coalesce().indices()[0].tolist()) <= {3, 7, 10, 999}
    opt.step()
    changed = set((model.embed.weight.detach() != before).any(1).nonzero().ravel().tolist())
    assert changed == {3, 7, 10}  # weight decay included: rows outside the batch (and padding) stay put
    assert isinstance(opt, LazyAdam) == optimizer.startswith("adam") and model.embed.sparse
    assert model.bias.grad is not None


def test_lazy_adam_matches_adam_on_the_rows_it_touches():
    torch.manual_seed(1)
    sparse = torch.nn.Embedding(50, 4, sparse=True)
    dense = torch.nn.Embedding(50, 4)
    dense.weight.data.copy_(sparse.weight.data)
    opts = [LazyAdam(sparse.parameters(), lr=0.05, decoupled=True, weight_decay=0.1),
            torch.optim.AdamW(dense.parameters(), lr=0.05, weight_decay=0.1)]
    ids = torch.tensor([[1, 4, 4, 9], [9, 2, 1, 1]])
    for _ in range(3):  # the same rows every step: lazy and dense Adam agree exactly there
        for emb, opt in zip((sparse, dense), opts):
            opt.zero_grad()
            (emb(ids) ** 2).sum().backward()
            opt.step()
    rows = [1, 2, 4, 9]
    torch.testing.assert_close(sparse.weight[rows], dense.weight[rows])
    # the optimizer state saves and loads like any other
    again = LazyAdam(sparse.parameters(), lr=0.05, decoupled=True)
    again.load_state_dict(opts[0].state_dict())
    assert float(again.state[sparse.weight]["step"]) == 3


def test_sparse_gradients_clip_like_dense_ones():
    torch.manual_seed(2)
    a = NgramBag(20, 2, pad_id=19)
    b = NgramBag(20, 2, pad_id=19)
    b.embed.sparse = False
    for m in (a, b):
        with torch.no_grad():
            m.embed.weight.copy_(torch.arange(40.0).view(20, 2) / 10)
    ids, w = torch.tensor([[1, 2, 2, 5]]), torch.ones(1, 4)
    for m in (a, b):
        (m(ids, w) ** 2).sum().backward()
    clip_grad_norm(a, 1.0)
    torch.nn.utils.clip_grad_norm_(b.parameters(), 1.0)
    torch.testing.assert_close(a.embed.weight.grad.to_dense(), b.embed.weight.grad)
    torch.testing.assert_close(a.bias.grad, b.bias.grad)


def test_optimizers_without_a_sparse_update_get_dense_gradients():
    model = NgramBag(10, 2, pad_id=9)
    build_optimizer(model, TrainerConfig(optimizer="rmsprop"))
    assert model.embed.sparse is False
    model = NgramBag(10, 2, pad_id=9)
    assert isinstance(build_optimizer(model, TrainerConfig(optimizer="adam")), LazyAdam)
    assert model.embed.sparse is True


def test_ngrams_are_scikit_learns():
    from sklearn.feature_extraction.text import CountVectorizer

    for analyzer, rng in (("char", (1, 4)), ("word", (1, 2))):
        f = NgramFeaturizer(analyzer, rng, "binary").fit(TEXTS, LABELS)
        cv = CountVectorizer(analyzer="char", ngram_range=rng) if analyzer == "char" else \
            CountVectorizer(token_pattern=r"(?u)\w+|[^\w\s]", ngram_range=rng)  # words and punctuation marks
        cv.fit(TEXTS)
        vocab = list(cv.vocabulary_)
        assert len(f.weights) == len(vocab)
        ids = f.feature_ids(vocab)
        assert None not in ids and len(set(ids)) == len(vocab)
        # and each text holds exactly the n-grams scikit-learn finds in it
        x = cv.transform(TEXTS)
        got, _ = f.encode_weighted(TEXTS)
        for i in range(len(TEXTS)):
            want = sorted(ids[vocab.index(g)] for g in np.array(cv.get_feature_names_out())[x[i].indices])
            assert sorted(got[i].tolist()) == (want or [f.pad_id])


def test_auto_picks_characters_for_chinese_and_words_for_english(tmp_path):
    zh = NgramFeaturizer().fit(TEXTS[:4], LABELS[:4])
    assert (zh.analyzer, zh.ngram_range) == ("char", (1, 4))
    en_texts = ["A great film, really great!", "a dull, lifeless movie.", "great acting", "dull plot"]
    en = NgramFeaturizer().fit(en_texts, [1, 0, 1, 0])
    assert (en.analyzer, en.ngram_range) == ("word", (1, 3))
    assert None not in en.feature_ids(["great", "great !", "dull ,", "lifeless movie ."])  # marks are words
    # the resolved choice is what the run keeps: a reloaded featurizer encodes the same
    en.save(tmp_path / "feat")
    again = NgramFeaturizer.load(tmp_path / "feat")
    assert (again.analyzer, again.ngram_range, again.words) == ("word", (1, 3), "match")
    for a, b in zip(en.encode_weighted(en_texts)[0], again.encode_weighted(en_texts)[0]):
        np.testing.assert_array_equal(a, b)
    # an explicit choice wins
    assert NgramFeaturizer("char", (2, 3)).fit(en_texts, [1, 0, 1, 0]).ngram_range == (2, 3)


def test_a_run_saved_with_whitespace_words_keeps_them(tmp_path):
    f = NgramFeaturizer("word", (1, 1), "binary").fit(["good film.", "bad film."], [1, 0])
    f.save(tmp_path / "feat")
    meta = tmp_path / "feat" / "ngrams.json"
    import json

    state = json.loads(meta.read_text())
    del state["words"]  # as written before words were matched
    meta.write_text(json.dumps(state))
    old = NgramFeaturizer.load(tmp_path / "feat")
    assert old.words == "split" and old._tokens("good film.") == ["good", "film."]
    assert f._tokens("good film.") == ["good", "film", "."]


def test_hash_buckets_bound_the_table(tmp_path):
    f = NgramFeaturizer("char", (1, 3), "nb", hash_buckets=64)
    ids, weights = f.fit_encode(TEXTS * 3, LABELS * 3)
    assert f.vocab_size == 65 and f.pad_id == 64
    assert max(int(i.max()) for i in ids) <= 64
    assert all(abs(float((w ** 2).sum()) - 1) < 1e-5 for w, i in zip(weights, ids) if i[0] != f.pad_id)
    f.save(tmp_path / "feat")
    assert sorted(p.name for p in (tmp_path / "feat").iterdir()) == ["ngram_weights.npy", "ngrams.json"]
    g = NgramFeaturizer.load(tmp_path / "feat")
    for a, b in zip(f.encode_weighted(TEXTS)[0], g.encode_weighted(TEXTS)[0]):
        np.testing.assert_array_equal(a, b)


def test_max_features_keeps_the_most_frequent():
    full = NgramFeaturizer("char", (1, 2), "binary").fit(TEXTS, LABELS)
    small = NgramFeaturizer("char", (1, 2), "binary", max_features=5).fit(TEXTS, LABELS)
    assert len(small.weights) == 5 < len(full.weights)
    assert small.feature_ids(["好"])[0] is not None  # in 4 texts: among the most frequent
    assert small.feature_ids(["酒店"])[0] is None


def test_many_class_nb_weights_are_the_per_class_ratio_max():
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefgh"), 6)) for _ in range(60)]
    labels = list(rng.integers(0, 5, 60))
    f = NgramFeaturizer("char", (1, 1), "nb", nb_alpha=1.0).fit(texts, labels)
    x = np.array([[c in t for c in "abcdefgh"] for t in texts], dtype=float)
    y = np.array(labels)
    want = np.zeros(8)
    for c in range(5):
        p, q = 1 + x[y == c].sum(0), 1 + x[y != c].sum(0)
        want = np.maximum(want, np.abs(np.log((p / p.sum()) / (q / q.sum()))))
    np.testing.assert_allclose(f.weights[f.feature_ids(list("abcdefgh"))], want, rtol=1e-5)
