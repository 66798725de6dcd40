"""Recommendation models. Every model scores the whole catalogue for a batch of queries (`score`) and, when it
learns by gradient, computes its own training loss on the batches the recommendation task builds (`loss`).

- Popularity: training interaction counts (the same list for everyone).
- ItemKNN: cosine item-item similarity over users, top neighbours kept; scores a history.
- BPR: matrix factorization trained to rank positives above sampled negatives (+ item bias).
- NCF: NeuMF, a GMF branch and an MLP branch, binary cross-entropy against sampled negatives.
- TwoTower: user and item towers over id + feature embeddings; ids dropped at random in training so the feature
  path alone scores new users and items.
- SASRec: causal self-attention over the user's recent items predicts the next one.
- GRU4Rec: a GRU over the same windows predicts the next one (SASRec's losses and scoring).
- ExplicitMF: rating = mean + user bias + item bias + factors, squared error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class Query:
    """A batch to score: user indexes (-1 = unknown to the model), each user's items oldest first, and for
    feature models optional per-row user features (rows of unknown users)."""

    users: torch.Tensor
    history: list[np.ndarray]
    user_features: dict[str, torch.Tensor] | None = None


class Recommender(nn.Module):
    batches = "pairs"        # what it trains on: pairs (user, positive, negatives), ratings, sequences, or none
    reads_history = False    # scores from the query's history (so an unknown user with a history is served)
    reads_features = False   # scores unknown users from their features
    predicts_ratings = False

    def score(self, q: Query) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self) -> torch.Tensor | None:
        """Item embeddings for similar-items (cosine); None: the model has none."""
        return None

    def factorized(self, q: Query) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(query vectors [B, d], catalogue vectors [n_items, d]) with score(q) == queries @ catalogue.T: what an
        inner-product search in a vector database needs. None when the score does not factorize (an MLP over the
        pair, item-item neighbours)."""
        return None


def _normal(*shape, std: float) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) * std)


# ------------------------------------------------------------------------------------------------ no training


class Popularity(Recommender):
    batches = "none"

    def __init__(self, n_items: int):
        super().__init__()
        self.register_buffer("counts", torch.zeros(n_items))

    def fit(self, items: np.ndarray) -> "Popularity":
        self.counts.copy_(torch.from_numpy(np.bincount(items, minlength=len(self.counts)).astype(np.float32)))
        return self

    def score(self, q: Query) -> torch.Tensor:
        return self.counts[None, :].expand(len(q.history), -1).clone()

    def factorized(self, q: Query):
        return torch.ones(len(q.history), 1, device=self.counts.device), self.counts[:, None]


def history_matrix(history: list[np.ndarray], n_items: int) -> sp.csr_matrix:
    rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
    cols = np.concatenate(history) if history else np.zeros(0, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(history), n_items))
    m.data[:] = 1.0  # repeated items count once
    return m


class ItemKNN(Recommender):
    """score(u, i) = sum over the user's items j of sim(j, i), with each item's `neighbors` most similar kept."""

    batches = "none"
    reads_history = True

    def __init__(self, n_items: int, neighbors: int, shrink: float = 0.0):
        super().__init__()
        k = max(1, min(neighbors, n_items - 1))
        self.n_items, self.shrink = n_items, shrink
        self.register_buffer("neighbors", torch.zeros(n_items, k, dtype=torch.long))
        self.register_buffer("weights", torch.zeros(n_items, k))
        self._sim = None

    def fit(self, users: np.ndarray, items: np.ndarray, n_users: int) -> "ItemKNN":
        x = sp.csr_matrix((np.ones(len(items), dtype=np.float32), (users, items)), shape=(n_users, self.n_items))
        x.data[:] = 1.0
        x = x.tocsc()
        co = (x.T @ x).tocsr()                      # co-occurrence counts, items x items
        norm = np.sqrt(np.asarray(co.diagonal(), dtype=np.float64))
        k = self.neighbors.shape[1]
        nb = np.zeros((self.n_items, k), dtype=np.int64)
        w = np.zeros((self.n_items, k), dtype=np.float32)
        for start in range(0, self.n_items, 1024):
            stop = min(self.n_items, start + 1024)
            block = co[start:stop].toarray().astype(np.float64)
            block /= norm[start:stop, None] * norm[None, :] + self.shrink + 1e-12
            block[np.arange(stop - start), np.arange(start, stop)] = 0.0
            top = torch.topk(torch.from_numpy(block), k, dim=1)
            nb[start:stop], w[start:stop] = top.indices.numpy(), top.values.numpy()
        self.neighbors.copy_(torch.from_numpy(nb))
        self.weights.copy_(torch.from_numpy(w))
        self._sim = None
        return self

    def similarity(self) -> sp.csr_matrix:
        if self._sim is None:
            k = self.neighbors.shape[1]
            rows = np.repeat(np.arange(self.n_items), k)
            cols = self.neighbors.cpu().numpy().ravel()
            self._sim = sp.csr_matrix((self.weights.cpu().numpy().ravel(), (rows, cols)),
                                      shape=(self.n_items, self.n_items))
        return self._sim

    def _load_from_state_dict(self, *args, **kwargs):
        self._sim = None
        return super()._load_from_state_dict(*args, **kwargs)

    def score(self, q: Query) -> torch.Tensor:
        s = history_matrix(q.history, self.n_items) @ self.similarity()
        return torch.from_numpy(np.asarray(s.todense(), dtype=np.float32)).to(self.weights.device)

    def similar(self, item: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        nb, w = self.neighbors[item].cpu().numpy(), self.weights[item].cpu().numpy()
        keep = w > 0
        return nb[keep][:k], w[keep][:k]


# ------------------------------------------------------------------------------------------------ factorization


class BPR(Recommender):
    def __init__(self, n_users: int, n_items: int, factors: int, item_bias: bool = True, init_std: float = 0.1):
        super().__init__()
        self.user = _normal(n_users, factors, std=init_std)
        self.item = _normal(n_items, factors, std=init_std)
        self.bias = nn.Parameter(torch.zeros(n_items)) if item_bias else None

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, M] -> [B, M]."""
        s = torch.einsum("bd,bmd->bm", self.user[users], self.item[items])
        return s + self.bias[items] if self.bias is not None else s

    def loss(self, batch: dict) -> torch.Tensor:
        pos = self.pair_scores(batch["user"], batch["pos"][:, None])
        neg = self.pair_scores(batch["user"], batch["neg"])
        return -F.logsigmoid(pos - neg).mean()

    def score(self, q: Query) -> torch.Tensor:
        s = self.user[q.users] @ self.item.T
        return s + self.bias[None] if self.bias is not None else s

    def item_vectors(self):
        return self.item

    def factorized(self, q: Query):
        u = self.user[q.users]
        bias = self.bias[:, None] if self.bias is not None else torch.zeros(len(self.item), 1, device=u.device)
        return torch.cat([u, torch.ones(len(u), 1, device=u.device)], 1), torch.cat([self.item, bias], 1)


class NCF(Recommender):
    """NeuMF (He et al. 2017): sigmoid(h . [GMF(p_u * q_i), MLP([p'_u, q'_i])])."""

    def __init__(self, n_users: int, n_items: int, gmf_dim: int, mlp_dims: list[int], dropout: float = 0.0):
        super().__init__()
        half = max(1, mlp_dims[0] // 2)
        self.gmf_user, self.gmf_item = _normal(n_users, gmf_dim, std=0.01), _normal(n_items, gmf_dim, std=0.01)
        self.mlp_user, self.mlp_item = _normal(n_users, half, std=0.01), _normal(n_items, half, std=0.01)
        layers, width = [], 2 * half
        for d in mlp_dims[1:]:
            layers += [nn.Linear(width, d), nn.ReLU(), nn.Dropout(dropout)]
            width = d
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(gmf_dim + width, 1)

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B, M] -> logits [B, M]."""
        m = items.shape[1]
        gmf = self.gmf_user[users][:, None, :] * self.gmf_item[items]
        mu = self.mlp_user[users][:, None, :].expand(-1, m, -1)
        mlp = self.mlp(torch.cat([mu, self.mlp_item[items]], dim=-1))
        return self.out(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def loss(self, batch: dict) -> torch.Tensor:
        items = torch.cat([batch["pos"][:, None], batch["neg"]], dim=1)
        target = torch.zeros_like(items, dtype=torch.float32)
        target[:, 0] = 1.0
        return F.binary_cross_entropy_with_logits(self.pair_scores(batch["user"], items), target)

    def score(self, q: Query) -> torch.Tensor:
        n_items = self.gmf_item.shape[0]
        users = q.users
        out = torch.empty(len(users), n_items, device=users.device)
        chunk = max(1, (1 << 18) // max(1, len(users)))
        for s in range(0, n_items, chunk):
            items = torch.arange(s, min(n_items, s + chunk), device=users.device)
            out[:, s:s + len(items)] = self.pair_scores(users, items[None].expand(len(users), -1))
        return out

    def item_vectors(self):
        return torch.cat([self.gmf_item, self.mlp_item], dim=1)


class ExplicitMF(Recommender):
    """Biased matrix factorization for ratings (Koren et al.): mu + b_u + b_i + p_u . q_i."""

    batches = "ratings"
    predicts_ratings = True

    def __init__(self, n_users: int, n_items: int, factors: int, init_std: float = 0.05, reg: float = 0.0):
        super().__init__()
        self.reg = reg
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("range", torch.tensor([-math.inf, math.inf]))
        self.user_bias, self.item_bias = nn.Parameter(torch.zeros(n_users)), nn.Parameter(torch.zeros(n_items))
        self.user, self.item = _normal(n_users, factors, std=init_std), _normal(n_items, factors, std=init_std)

    def set_ratings(self, ratings: np.ndarray) -> "ExplicitMF":
        self.mean.fill_(float(np.mean(ratings)))
        self.range.copy_(torch.tensor([float(np.min(ratings)), float(np.max(ratings))]))
        return self

    def predict(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Ratings for pairs; an unknown user (-1) gets mean + item bias."""
        known = users >= 0
        u = users.clamp(min=0)
        r = self.mean + self.item_bias[items] + known * (self.user_bias[u] + (self.user[u] * self.item[items]).sum(-1))
        return r

    def loss(self, batch: dict) -> torch.Tensor:
        u, i = batch["user"], batch["item"]
        loss = F.mse_loss(self.predict(u, i), batch["rating"])
        if self.reg:
            norms = (self.user[u].square().sum(-1) + self.item[i].square().sum(-1) + self.user_bias[u].square()
                     + self.item_bias[i].square())
            loss = loss + self.reg * norms.mean()
        return loss

    def score(self, q: Query) -> torch.Tensor:
        known = (q.users >= 0)[:, None]
        u = q.users.clamp(min=0)
        inter = self.user_bias[u][:, None] + self.user[u] @ self.item.T
        return self.mean + self.item_bias[None] + known * inter

    def item_vectors(self):
        return self.item

    def factorized(self, q: Query):
        """[known·p_u, known·b_u + mean, 1] · [q_i, 1, b_i] = mean + b_i + known·(b_u + p_u·q_i)."""
        known = (q.users >= 0)[:, None].float()
        u = q.users.clamp(min=0)
        ones_q, ones_i = torch.ones(len(u), 1, device=u.device), torch.ones(len(self.item), 1, device=u.device)
        return (torch.cat([known * self.user[u], known * self.user_bias[u][:, None] + self.mean, ones_q], 1),
                torch.cat([self.item, ones_i, self.item_bias[:, None]], 1))


# ------------------------------------------------------------------------------------------------ two-tower


class Tower(nn.Module):
    """id embedding (0 = unknown) + one embedding per categorical column + mean embedding per bag column +
    a projection of the numbers -> MLP -> unit vector."""

    def __init__(self, n_ids: int, dims: dict | None, dim: int, feature_dim: int, hidden: list[int],
                 id_embeddings: bool, dropout: float):
        super().__init__()
        dims = dims or {"categorical": [], "bags": [], "numeric": 0}
        self.ids = nn.Embedding(n_ids + 1, dim) if id_embeddings else None
        self.cat = nn.ModuleList(nn.Embedding(c, feature_dim) for c in dims["categorical"])
        self.bags = nn.ModuleList(nn.Embedding(c, feature_dim, padding_idx=0) for c in dims["bags"])
        self.num = nn.Linear(dims["numeric"], feature_dim) if dims["numeric"] else None
        width = (dim if id_embeddings else 0) + feature_dim * (len(self.cat) + len(self.bags) + (self.num is not None))
        layers = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)
        if self.ids is not None:
            nn.init.normal_(self.ids.weight, std=0.1)

    def forward(self, ids: torch.Tensor, feats: dict[str, torch.Tensor], bag_keys: list[str]) -> torch.Tensor:
        parts = [self.ids(ids)] if self.ids is not None else []
        parts += [emb(feats["cat"][:, j]) for j, emb in enumerate(self.cat)]
        for emb, key in zip(self.bags, bag_keys, strict=True):
            tokens = feats[key]
            mask = (tokens > 0).float().unsqueeze(-1)
            parts.append((emb(tokens) * mask).sum(1) / mask.sum(1).clamp(min=1.0))
        if self.num is not None:
            parts.append(self.num(feats["num"]))
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class TwoTower(Recommender):
    reads_features = True

    def __init__(self, n_users: int, n_items: int, user_feats: dict | None, item_feats: dict | None,
                 user_dims: dict | None, item_dims: dict | None, *, dim: int, hidden: list[int], feature_dim: int,
                 id_embeddings: bool, id_dropout: float, temperature: float, dropout: float):
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.id_dropout, self.temperature = id_dropout, temperature
        self.user_tower = Tower(n_users, user_dims, dim, feature_dim, hidden, id_embeddings, dropout)
        self.item_tower = Tower(n_items, item_dims, dim, feature_dim, hidden, id_embeddings, dropout)
        self.user_keys, self.item_keys = self._register("user", user_feats), self._register("item", item_feats)

    def _register(self, role: str, feats: dict | None) -> list[str]:
        """Feature tensors of every known user/item as buffers (saved with the weights); returns the bag keys."""
        keys = []
        for k, v in (feats or {}).items():
            name = f"{role}_" + k.replace(":", "__")
            self.register_buffer(name, v.clone())
            keys.append((k, name))
        setattr(self, f"_{role}_names", keys)
        return [k for k, _ in keys if k.startswith("bag:")]

    def _feats(self, role: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: getattr(self, name)[rows] for k, name in getattr(self, f"_{role}_names")}

    def _ids(self, idx: torch.Tensor) -> torch.Tensor:
        ids = idx + 1
        if self.training and self.id_dropout > 0:
            ids = torch.where(torch.rand(ids.shape, device=ids.device) < self.id_dropout, torch.zeros_like(ids), ids)
        return ids

    def users(self, idx: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        """User vectors; idx -1 = unknown (id dropped, features from `feats`)."""
        rows = idx.clamp(min=0)
        f = self._feats("user", rows) if feats is None else {k: v.to(idx.device) for k, v in feats.items()}
        return self.user_tower(self._ids(idx).clamp(min=0), f, self.user_keys)

    def items(self, idx: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        rows = idx.clamp(min=0)
        f = self._feats("item", rows) if feats is None else {k: v.to(idx.device) for k, v in feats.items()}
        return self.item_tower(self._ids(idx).clamp(min=0), f, self.item_keys)

    def loss(self, batch: dict) -> torch.Tensor:
        u = self.users(batch["user"])
        items = torch.cat([batch["pos"][:, None], batch["neg"]], dim=1)
        v = self.items(items.reshape(-1)).view(items.shape[0], items.shape[1], -1)
        logits = torch.einsum("bd,bmd->bm", u, v) / self.temperature
        return F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=u.device))

    def score(self, q: Query) -> torch.Tensor:
        return self.users(q.users, q.user_features) @ self.item_vectors().T / self.temperature

    def factorized(self, q: Query):
        return self.users(q.users, q.user_features) / self.temperature, self.item_vectors()

    def item_vectors(self):
        return self.items(torch.arange(self.n_items, device=self.user_tower.mlp[-1].weight.device))


# ------------------------------------------------------------------------------------------------ sequential


class SASRec(Recommender):
    """Self-attentive sequential recommendation (Kang & McAuley 2018) with pre-norm blocks; trained with a softmax
    over the whole catalogue at every position (ce) or against sampled negatives (bce)."""

    batches = "sequences"
    reads_history = True

    def __init__(self, n_items: int, max_length: int, hidden: int, layers: int, heads: int, dropout: float,
                 loss: str = "ce"):
        super().__init__()
        self.n_items, self.max_length, self.hidden, self.loss_kind = n_items, max_length, hidden, loss
        self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)   # 0 = padding, item i is i + 1
        self.position = nn.Embedding(max_length, hidden)
        nn.init.normal_(self.item.weight, std=1 / math.sqrt(hidden))
        with torch.no_grad():
            self.item.weight[0].zero_()
        block = nn.TransformerEncoderLayer(hidden, heads, hidden, dropout, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("causal", torch.triu(torch.ones(max_length, max_length, dtype=torch.bool), 1),
                             persistent=False)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, T] (left-padded item ids + 1) -> hidden states [B, T, H]."""
        t = seq.shape[1]
        h = self.item(seq) * math.sqrt(self.hidden) + self.position.weight[-t:][None]
        h = self.drop(h) * (seq > 0).unsqueeze(-1)
        return self.norm(self.encoder(h, mask=self.causal[:t, :t], is_causal=True))

    def sequences(self, history: list[np.ndarray], device) -> torch.Tensor:
        out = torch.zeros(len(history), self.max_length, dtype=torch.long)
        for r, h in enumerate(history):
            h = h[-self.max_length:]
            if len(h):
                out[r, self.max_length - len(h):] = torch.as_tensor(h) + 1
        return out.to(device)

    def loss(self, batch: dict) -> torch.Tensor:
        h = self.encode(batch["x"])
        y = batch["y"]
        mask = y > 0
        states = h[mask]
        if self.loss_kind == "ce":
            return F.cross_entropy(states @ self.item.weight[1:].T, y[mask] - 1)
        pos = (states * self.item(y[mask])).sum(-1)
        neg = (states * self.item(batch["neg"][mask] + 1)).sum(-1)
        return F.binary_cross_entropy_with_logits(torch.cat([pos, neg]),
                                                  torch.cat([torch.ones_like(pos), torch.zeros_like(neg)]))

    def score(self, q: Query) -> torch.Tensor:
        seq = self.sequences(q.history, self.item.weight.device)
        return self.encode(seq)[:, -1] @ self.item.weight[1:].T

    def factorized(self, q: Query):
        """The encoding of each user's recent items (as of the history given), and the item embeddings."""
        return self.encode(self.sequences(q.history, self.item.weight.device))[:, -1], self.item.weight[1:]

    def item_vectors(self):
        return self.item.weight[1:]


class GRU4Rec(SASRec):
    """GRU4Rec (Hidasi et al. 2016; cross-entropy over the catalogue as in Hidasi & Karatzoglou 2018): a GRU reads
    the user's recent items and its state at each position predicts the next item. Windows, losses and scoring are
    SASRec's; only the encoder differs. Left-padded windows are run packed, so padding never enters the state."""

    def __init__(self, n_items: int, max_length: int, hidden: int, layers: int, dropout: float, loss: str = "ce"):
        Recommender.__init__(self)
        self.n_items, self.max_length, self.hidden, self.loss_kind = n_items, max_length, hidden, loss
        self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)   # 0 = padding, item i is i + 1
        nn.init.normal_(self.item.weight, std=1 / math.sqrt(hidden))
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.gru = nn.GRU(hidden, hidden, layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [B, T] (left-padded item ids + 1) -> hidden states [B, T, H], aligned with seq (zeros on padding)."""
        from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

        b, t = seq.shape
        lengths = (seq > 0).sum(1)
        pad = (t - lengths)[:, None]
        steps = torch.arange(t, device=seq.device)[None]
        items_first = seq.gather(1, (steps + pad) % t)  # each row's items moved to the front, padding after
        packed = pack_padded_sequence(self.drop(self.item(items_first)), lengths.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.gru(packed)[0], batch_first=True, total_length=t)
        back = ((steps - pad) % t)[..., None].expand(-1, -1, out.shape[-1])  # and back to the right edge
        return self.drop(out.gather(1, back))


# the registry's builders (luban.models.recsys_config): users / items are the id maps, tables the feature tables


def build_popularity(cfg, *, items, **_) -> Popularity:
    return Popularity(len(items))


def build_itemknn(cfg, *, items, **_) -> ItemKNN:
    return ItemKNN(len(items), cfg.neighbors, cfg.shrink)


def build_bpr(cfg, *, users, items, **_) -> BPR:
    return BPR(len(users), len(items), cfg.factors, cfg.item_bias, cfg.init_std)


def build_ncf(cfg, *, users, items, **_) -> NCF:
    return NCF(len(users), len(items), cfg.gmf_dim, cfg.mlp_dims, cfg.dropout)


def build_explicit_mf(cfg, *, users, items, **_) -> ExplicitMF:
    return ExplicitMF(len(users), len(items), cfg.factors, cfg.init_std, cfg.reg)


def build_sasrec(cfg, *, items, **_) -> SASRec:
    return SASRec(len(items), cfg.max_length, cfg.hidden, cfg.layers, cfg.heads, cfg.dropout, cfg.loss)


def build_gru4rec(cfg, *, items, **_) -> GRU4Rec:
    return GRU4Rec(len(items), cfg.max_length, cfg.hidden, cfg.layers, cfg.dropout, cfg.loss)


def build_two_tower(cfg, *, users, items, tables: dict, **_) -> TwoTower:
    ut, it = tables.get("user"), tables.get("item")
    return TwoTower(len(users), len(items), ut.rows_for(users.ids) if ut else None,
                    it.rows_for(items.ids) if it else None, ut.dims() if ut else None, it.dims() if it else None,
                    dim=cfg.dim, hidden=cfg.hidden, feature_dim=cfg.feature_dim, id_embeddings=cfg.id_embeddings,
                    id_dropout=cfg.id_dropout, temperature=cfg.temperature, dropout=cfg.dropout)
