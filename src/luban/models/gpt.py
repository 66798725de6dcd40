"""A small decoder-only Transformer (GPT), written to be read top to bottom.

Pre-norm blocks (LayerNorm -> causal self-attention -> residual, LayerNorm -> MLP -> residual), token embeddings
tied to the output head by default, and either learned absolute positions or rotary position embeddings (RoPE).
Attention uses ``torch.nn.functional.scaled_dot_product_attention``.

For generation the model keeps a KV cache: ``forward(ids, past=..., use_cache=True)`` returns the logits and, per
layer, the keys and values of every position seen so far, so each new token costs one position of work.
``next_token_logits`` is the small interface that ``luban.generation.decoding`` drives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

# One (keys, values) pair per layer, each shaped (batch, heads, seen_positions, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class GPTSizes:
    vocab_size: int
    block_size: int = 128       # longest context the model is trained on (and attends over when generating)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True           # biases in Linear and LayerNorm layers
    positions: str = "learned"  # "learned" absolute embeddings, or "rope"
    tie_weights: bool = True    # share the token embedding matrix with the output head
    rope_base: float = 10000.0

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if self.positions not in ("learned", "rope"):
            raise ValueError(f"positions must be 'learned' or 'rope', not {self.positions!r}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError("RoPE needs an even head size (n_embd / n_head)")


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, positions' shape + (head_dim // 2,), for rotating pairs of channels."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (t, hd/2), or (batch, t, hd/2) for per-row positions
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[..., 2i], x[..., 2i+1]) of x (batch, heads, time, head_dim) by position angles."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


def _explicit_attention(q, k, v, mask, causal: bool, dropout: float):
    """softmax(q k^T / sqrt(d)) v written out. Used for bf16 on CPU, where it measured ~5x faster (forward +
    backward) than the fused CPU flash-attention kernel at GPT-sized heads (T=64, head_dim=32)."""
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.dropout(scores.softmax(dim=-1), p=dropout, training=dropout > 0)
    return weights @ v


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTSizes):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.rope = cfg.positions == "rope"
        self.rope_base = cfg.rope_base
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, positions, past=None, key_mask=None):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, self.head_dim).transpose(1, 2) for z in (q, k, v))
        if self.rope:
            cos, sin = rope_tables(positions, self.head_dim, self.rope_base)
            if positions.dim() == 2:  # per-row positions: broadcast over heads
                cos, sin = cos[:, None], sin[:, None]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if past is not None:  # cached keys were rotated at their own positions already
            k = torch.cat([past[0], k], dim=2)
            v = torch.cat([past[1], v], dim=2)
        present = (k, v)
        seen = k.shape[2] - t
        if key_mask is not None:  # a left-padded batch: causal, padding keys hidden, each query sees itself
            causal_keys = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=seen)
            itself = torch.zeros_like(causal_keys)
            itself[torch.arange(t), seen + torch.arange(t)] = True  # (a padding query would otherwise see nothing)
            mask, causal = (causal_keys & key_mask[:, None, None, :]) | itself, False
        elif seen == 0:
            mask, causal = None, True
        elif t == 1:
            mask, causal = None, False  # one new query may look at everything before it
        else:  # new query i sits at absolute position seen + i and sees keys 0..seen + i
            mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(diagonal=seen)
            causal = False
        drop = self.dropout if self.training else 0.0
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            y = _explicit_attention(q, k, v, mask, causal, drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(b, t, c)
        return self.resid_dropout(self.proj(y)), present


class MLP(nn.Module):
    def __init__(self, cfg: GPTSizes):
        super().__init__()
        self.fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTSizes):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, positions, past=None, key_mask=None):
        a, present = self.attn(self.ln_1(x), positions, past, key_mask)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, present


class GPT(nn.Module):
    def __init__(self, cfg: GPTSizes):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by depth
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def max_context(self) -> int:
        return self.cfg.block_size

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, ids: torch.Tensor, past: KVCache | None = None, use_cache: bool = False,
                key_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None):
        """ids (batch, time) -> logits (batch, time, vocab); with use_cache also the updated KV cache.
        A left-padded batch gives key_mask (batch, cached + time; False on padding) and per-row positions
        (batch, time)."""
        x, presents = self._trunk(ids, past, key_mask, positions)
        logits = self.lm_head(x)
        return (logits, presents) if use_cache else logits

    def logits_at(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Logits (n, vocab) at the positions where the (batch, time) mask `keep` is true (row-major): training on
        replies runs the output head on their tokens alone."""
        return self.lm_head(self._trunk(ids, None, None, None)[0][keep])

    def _trunk(self, ids, past, key_mask, positions):
        """The final-norm hidden states (batch, time, n_embd) and each block's KV cache."""
        t = ids.shape[1]
        seen = past[0][0].shape[2] if past else 0
        if positions is None:
            if seen + t > self.cfg.block_size:
                raise ValueError(f"sequence of {seen + t} positions is longer than block_size {self.cfg.block_size}")
            positions = torch.arange(seen, seen + t, device=ids.device)
        elif int(positions.max()) >= self.cfg.block_size:
            raise ValueError(f"position {int(positions.max())} is past block_size {self.cfg.block_size}")
        x = self.wte(ids)
        if self.wpe is not None:
            x = x + self.wpe(positions)
        x = self.drop(x)
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, positions, past[i] if past else None, key_mask)
            presents.append(present)
        return self.ln_f(x), presents

    def loss(self, ids: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
        """Mean next-token cross-entropy; targets are ids shifted left by one (ignore_index skips positions)."""
        logits = self(ids)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=ignore_index)

    @torch.no_grad()
    def next_token_logits(self, ids: torch.Tensor, cache: KVCache | None = None):
        """The decoding interface: feed new ids (1, t) after ``cache``; get last-position logits (1, vocab)."""
        logits, cache = self(ids, past=cache, use_cache=True)
        return logits[:, -1, :], cache

    @torch.no_grad()
    def next_token_logits_batch(self, ids: torch.Tensor, cache: KVCache | None, key_mask: torch.Tensor,
                                positions: torch.Tensor):
        """Batched decoding: left-padded ids (batch, t) after ``cache``, key_mask (batch, cached + t), positions
        (batch, t) -> last-position logits (batch, vocab) and the cache."""
        logits, cache = self(ids, past=cache, use_cache=True, key_mask=key_mask, positions=positions)
        return logits[:, -1, :], cache


def build(cfg, *, vocab_size: int, **_) -> GPT:
    """The registry's builder for GPTConfig (luban.models.gpt_config); n_embd: auto is the vocabulary's width."""
    from luban.models.gpt_config import auto_width

    n_embd = auto_width(vocab_size, cfg.n_head) if cfg.n_embd == "auto" else cfg.n_embd
    return GPT(GPTSizes(vocab_size=vocab_size, block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                        n_embd=n_embd, dropout=cfg.dropout, bias=cfg.bias, positions=cfg.positions,
                        tie_weights=cfg.tie_weights))
