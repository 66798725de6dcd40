"""Encoder-decoder models for translation and summarization, behind one small interface.

``Seq2SeqTransformer`` is a Transformer from scratch, written to be read top to bottom: pre-norm layers
(LayerNorm -> attention -> residual, LayerNorm -> feed-forward -> residual), sinusoidal or learned positions,
dropout on the embeddings and on every residual branch (not inside attention or the feed-forward: fairseq's
defaults, and on a CPU the random masks are a large share of a step),
token embeddings scaled by sqrt(d_model), the target embedding tied to the output layer, and with
``shared_vocabulary`` one embedding for source, target and output. ``copy=True`` (config: copy_source) adds a pointer-generator head
(See et al. 2017): the output mixes the vocabulary distribution with an attention distribution over the source
tokens, so rare words and names can be copied from the source (needs the shared vocabulary).

``HFSeq2Seq`` wraps any Hugging Face ``AutoModelForSeq2SeqLM`` (T5, BART, Marian, mBART...), loaded from a local
folder (a hub id only with allow_download), rebuilt offline from its saved config in a run directory.

Both offer what training and ``luban.generation.beam`` need::

    forward(src, src_mask, tgt_in) -> scores (B, T, V)          teacher forcing; log-probabilities when
                                                                 ``outputs_log_probs`` (the copy head), else logits
    start_state(src, src_mask) -> state                          encode once; the decoder caches live in state
    decode_step(new_ids (N, t), state) -> (scores (N, V), state) the next-token scores after new_ids
    reorder_state(state, index) -> state                         index_select every per-row tensor (beams)

Decoding keeps a KV cache: each layer's self-attention keys/values grow by one position per step, and the
cross-attention keys/values of the encoder output are computed once and reused.
"""

from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

from luban.errors import ConfigError


def sinusoids(n: int, d: int) -> torch.Tensor:
    """The (n, d) sinusoidal position table of "Attention is all you need"."""
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return table


LONG_ATTENTION = 128 * 128  # queries x keys from which the fp32 fused kernel beats plain bf16 ops on a CPU


def attend(q, k, v, mask=None, causal=False):
    """Scaled dot-product attention; `mask` is True where attention is allowed. On a CPU in bf16/fp16 the fused
    kernels are slow (the flash backward measured ~6x slower than plain ops on short sequences), so short ones use
    plain ops, and long ones (document-length self-attention) the fused kernel in fp32, ~2x faster than either."""
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    if q.shape[-2] * k.shape[-2] >= LONG_ATTENTION:
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal)
        return y.to(q.dtype)
    t, s = q.shape[-2], k.shape[-2]
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if causal:
        scores = scores.masked_fill(~torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.float().softmax(-1).to(v.dtype) @ v


class Attention(nn.Module):
    """Multi-head attention; `cross` attends from the decoder to the encoder output (keys/values projected once)."""

    def __init__(self, d_model: int, nhead: int, cross: bool = False):
        super().__init__()
        self.nhead, self.head_dim, self.cross = nhead, d_model // nhead, cross
        if cross:
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.nhead, self.head_dim).transpose(1, 2)

    def project_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x, mask=None, causal=False, kv=None, past=None):
        """x (B, T, d). Self-attention: `past` = cached (k, v) to extend (returned as the new cache). Cross:
        `kv` = the projected encoder keys/values. `mask` (B, 1, 1|T, S) is True where attention is allowed."""
        b, t, d = x.shape
        if self.cross:
            q = self._heads(self.q(x))
            k, v = kv
            present = None
        else:
            q, k, v = (self._heads(z) for z in self.qkv(x).chunk(3, dim=-1))
            if past is not None:
                k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
                causal = causal and t > 1  # one new query may see every cached key
            present = (k, v)
            if causal and k.shape[2] != t:  # several new queries after a cache: offset causal mask
                mask = torch.ones(t, k.shape[2], dtype=torch.bool, device=x.device).tril(k.shape[2] - t)
                causal = False
        y = attend(q, k, v, mask, causal)
        return self.out(y.transpose(1, 2).reshape(b, t, d)), present


class FeedForward(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.fc = nn.Linear(d_model, dim_feedforward)
        self.proj = nn.Linear(dim_feedforward, d_model)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x)))


class EncoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward, dropout):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attn = Attention(d_model, nhead)
        self.ff = FeedForward(d_model, dim_feedforward)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask):
        x = x + self.drop(self.attn(self.norm1(x), mask=mask)[0])
        return x + self.drop(self.ff(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, d_model, nhead, dim_feedforward, dropout):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.self_attn = Attention(d_model, nhead)
        self.cross_attn = Attention(d_model, nhead, cross=True)
        self.ff = FeedForward(d_model, dim_feedforward)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cross_kv, memory_mask, past=None):
        a, present = self.self_attn(self.norm1(x), causal=True, past=past)
        x = x + self.drop(a)
        x = x + self.drop(self.cross_attn(self.norm2(x), mask=memory_mask, kv=cross_kv)[0])
        return x + self.drop(self.ff(self.norm3(x))), present


class CopyHead(nn.Module):
    """Pointer-generator (See et al. 2017) that can follow a copied span.

    p(w) = p_gen * p_vocab(w) + (1 - p_gen) * copy mass on the source positions holding w, where the copy
    distribution mixes a fresh attention over the source with `follow`: the previous step's attention on the
    occurrences of the previous token, moved one position on (so "Navier-Stokes" is copied character after
    character instead of re-found at every step). A learned gate weighs the two; it is closed when the previous
    token does not occur in the source. Everything is computed for all steps at once in training.
    """

    def __init__(self, d_model: int):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.gate = nn.Linear(2 * d_model, 2)  # p_gen and the follow gate

    def project(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)

    def forward(self, h, logits, keys, memory, src_ids, key_mask, inputs, prev_attn):
        """h (B, T, d), logits (B, T, V), keys/memory (B, S, d), src_ids (B, S), key_mask (B, S) bool,
        inputs (B, T) the decoder's input ids (the previous tokens), prev_attn (B, S) the copy attention of the
        step before the first input (zeros at the start). Returns log-probabilities and the last attention."""
        scores = torch.einsum("btd,bsd->bts", self.query(h), keys).float() / math.sqrt(h.shape[-1])
        attn = scores.masked_fill(~key_mask[:, None, :], float("-inf")).softmax(-1)
        context = torch.einsum("bts,bsd->btd", attn.to(memory.dtype), memory)
        gates = torch.sigmoid(self.gate(torch.cat([h, context], dim=-1)).float())
        p_gen, follow_gate = gates[..., :1], gates[..., 1:]
        before = torch.cat([prev_attn[:, None, :], attn[:, :-1]], dim=1)
        on_prev = before * (src_ids[:, None, :] == inputs[:, :, None])
        follow = F.pad(on_prev[..., :-1], (1, 0)) * key_mask[:, None, :]
        mass = follow.sum(-1, keepdim=True)
        follow_gate = follow_gate * (mass > 1e-6)
        copy = (1 - follow_gate) * attn + follow_gate * follow / mass.clamp_min(1e-6)
        probs = p_gen * logits.float().softmax(-1)
        probs = probs.scatter_add(2, src_ids[:, None, :].expand(-1, h.shape[1], -1), (1 - p_gen) * copy)
        return probs.clamp_min(1e-12).log(), attn[:, -1]


class Seq2SeqTransformer(nn.Module):
    def __init__(self, src_vocab: int, tgt_vocab: int, d_model: int = 256, nhead: int = 4,
                 num_encoder_layers: int = 3, num_decoder_layers: int = 3, dim_feedforward: int = 1024,
                 dropout: float = 0.1, shared_vocabulary: bool = False, positions: str = "sinusoidal",
                 max_positions: int = 512, copy: bool = False, pad_id: int = 0):
        super().__init__()
        if shared_vocabulary and src_vocab != tgt_vocab:
            raise ValueError("a shared vocabulary needs the same source and target vocabulary size")
        if copy and not shared_vocabulary:
            raise ConfigError("model.copy_source: copying source tokens needs model.shared_vocabulary: true")
        self.d_model, self.pad_id, self.positions = d_model, pad_id, positions
        self.tgt_emb = nn.Embedding(tgt_vocab, d_model)
        self.src_emb = self.tgt_emb if shared_vocabulary else nn.Embedding(src_vocab, d_model)
        if positions == "learned":
            self.pos_emb = nn.Embedding(max_positions, d_model)
        else:
            self.register_buffer("pos_table", sinusoids(max_positions, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, nhead, dim_feedforward, dropout)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, nhead, dim_feedforward, dropout)
                                     for _ in range(num_decoder_layers))
        self.enc_norm, self.dec_norm = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.out_bias = nn.Parameter(torch.zeros(tgt_vocab))
        self.copy_head = CopyHead(d_model) if copy else None
        self.outputs_log_probs = copy
        self._init()

    def _init(self):
        for name, p in self.named_parameters():
            if name.endswith("emb.weight"):
                nn.init.normal_(p, std=self.d_model ** -0.5)
            elif p.ndim >= 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def max_positions(self) -> int | None:
        return self.pos_emb.num_embeddings if self.positions == "learned" else None

    def _embed(self, emb: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        t = ids.shape[1]
        if self.positions == "learned":
            if start + t > self.pos_emb.num_embeddings:
                raise ValueError(f"{start + t} positions; learned positions stop at {self.pos_emb.num_embeddings}")
            pos = self.pos_emb(torch.arange(start, start + t, device=ids.device))
        else:
            if start + t > self.pos_table.shape[0]:  # sinusoids extend to any length
                self.pos_table = sinusoids(2 * (start + t), self.d_model).to(self.pos_table.device)
            pos = self.pos_table[start:start + t]
        return self.drop(emb(ids) * math.sqrt(self.d_model) + pos.to(emb.weight.dtype))

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self._embed(self.src_emb, src)
        mask = src_mask.bool()[:, None, None, :]
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x)

    def _output(self, h, state, inputs):
        """Scores for every position of h; with the copy head also the state's last copy attention."""
        logits = F.linear(h, self.tgt_emb.weight, self.out_bias)
        if self.copy_head is None:
            return logits, state
        out, last = self.copy_head(h, logits, state["copy_keys"], state["memory"], state["src"], state["key_mask"],
                                   inputs, state["prev_copy"])
        return out, {**state, "prev_copy": last}

    def _memory_state(self, src, src_mask, memory) -> dict:
        state = {"mask": src_mask.bool()[:, None, None, :],
                 "cross": [layer.cross_attn.project_kv(memory) for layer in self.decoder],
                 "self": [None] * len(self.decoder), "pos": 0}
        if self.copy_head is not None:
            state.update(memory=memory, src=src, key_mask=src_mask.bool(), copy_keys=self.copy_head.project(memory),
                         prev_copy=memory.new_zeros(src.shape, dtype=torch.float32))
        return state

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory = self.encode(src, src_mask)
        state = self._memory_state(src, src_mask, memory)
        x = self._embed(self.tgt_emb, tgt_in)
        for layer, kv in zip(self.decoder, state["cross"]):
            x, _ = layer(x, kv, state["mask"])
        return self._output(self.dec_norm(x), state, tgt_in)[0]

    # ------------------------------------------------------------------------------------------ decoding
    def start_state(self, src: torch.Tensor, src_mask: torch.Tensor) -> dict:
        return self._memory_state(src, src_mask, self.encode(src, src_mask))

    def decode_step(self, new_ids: torch.Tensor, state: dict):
        x = self._embed(self.tgt_emb, new_ids, state["pos"])
        presents = []
        for layer, kv, past in zip(self.decoder, state["cross"], state["self"]):
            x, present = layer(x, kv, state["mask"], past)
            presents.append(present)
        state = {**state, "self": presents, "pos": state["pos"] + new_ids.shape[1]}
        h = self.dec_norm(x if self.copy_head is not None else x[:, -1:])  # the copy head follows every new step
        scores, state = self._output(h, state, new_ids)
        return scores[:, -1], state

    @staticmethod
    def reorder_state(state: dict, index: torch.Tensor) -> dict:
        def pick(v):
            if isinstance(v, torch.Tensor):
                return v.index_select(0, index)
            if isinstance(v, (list, tuple)):
                return type(v)(pick(x) for x in v)
            return v

        return {k: pick(v) for k, v in state.items()}


class HFSeq2Seq(nn.Module):
    """A Hugging Face AutoModelForSeq2SeqLM with the interface above; `hf` is the wrapped model."""

    outputs_log_probs = False

    def __init__(self, hf: nn.Module):
        super().__init__()
        self.hf = hf
        conf = hf.config
        start = getattr(conf, "decoder_start_token_id", None)
        if start is None:
            gen = getattr(hf, "generation_config", None)
            start = getattr(gen, "decoder_start_token_id", None) if gen is not None else None
        if start is None:
            start = conf.pad_token_id if conf.pad_token_id is not None else conf.bos_token_id
        self.decoder_start_id = int(start)
        gen = getattr(hf, "generation_config", None)
        forced = getattr(gen, "forced_bos_token_id", None) if gen is not None else None
        forced = forced if forced is not None else getattr(conf, "forced_bos_token_id", None)
        self.forced_bos_id = int(forced) if forced is not None else None

    @classmethod
    def from_pretrained(cls, source: str, allow_download: bool = False, trust_remote_code: bool = False):
        if not allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForSeq2SeqLM

        try:
            hf = AutoModelForSeq2SeqLM.from_pretrained(source, local_files_only=not allow_download,
                                                       trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.path: cannot load a seq2seq model (AutoModelForSeq2SeqLM) from {source}: "
                              f"{e}") from None
        return cls(hf)

    @classmethod
    def from_config_dir(cls, folder: str, trust_remote_code: bool = False):
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        hf = AutoModelForSeq2SeqLM.from_config(config, trust_remote_code=trust_remote_code)
        try:
            from transformers import GenerationConfig

            hf.generation_config = GenerationConfig.from_pretrained(folder, local_files_only=True)
        except OSError:
            pass
        return cls(hf)

    def save_config(self, folder: str) -> None:
        self.hf.config.save_pretrained(folder)
        if getattr(self.hf, "generation_config", None) is not None:
            self.hf.generation_config.save_pretrained(folder)

    @property
    def pad_id(self) -> int:
        return self.hf.config.pad_token_id

    @property
    def max_positions(self) -> int | None:
        """Learned decoder positions stop somewhere (BART, Marian); relative ones (T5) do not."""
        return getattr(self.hf.config, "max_position_embeddings", None)

    def forward(self, src, src_mask, tgt_in):
        return self.hf(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt_in, use_cache=False).logits

    def start_state(self, src, src_mask) -> dict:
        enc = self.hf.get_encoder()(input_ids=src, attention_mask=src_mask, return_dict=True)
        return {"memory": enc.last_hidden_state, "mask": src_mask, "cache": None}

    def decode_step(self, new_ids, state):
        from transformers.modeling_outputs import BaseModelOutput

        out = self.hf(encoder_outputs=BaseModelOutput(last_hidden_state=state["memory"]),
                      attention_mask=state["mask"], decoder_input_ids=new_ids, past_key_values=state["cache"],
                      use_cache=True, return_dict=True)
        return out.logits[:, -1], {**state, "cache": out.past_key_values}

    @staticmethod
    def reorder_state(state: dict, index: torch.Tensor) -> dict:
        cache = state["cache"]
        if cache is not None:
            cache.reorder_cache(index)  # in place, along the batch dimension
        return {"memory": state["memory"].index_select(0, index), "mask": state["mask"].index_select(0, index),
                "cache": cache}


def build_transformer(cfg, *, sides, **_) -> Seq2SeqTransformer:
    """The registry's builder for Seq2SeqTransformerConfig; `sides` is the task's tokenization (vocabulary sizes,
    the target's pad and start ids)."""
    src_vocab, tgt_vocab = sides.vocab_sizes
    return Seq2SeqTransformer(
        src_vocab, tgt_vocab, d_model=cfg.d_model, nhead=cfg.nhead, num_encoder_layers=cfg.num_encoder_layers,
        num_decoder_layers=cfg.num_decoder_layers, dim_feedforward=cfg.dim_feedforward, dropout=cfg.dropout,
        shared_vocabulary=cfg.shared_vocabulary, positions=cfg.positions, copy=cfg.copy_source, pad_id=sides.tgt_pad,
        max_positions=max(cfg.max_source_length, cfg.max_target_length + len(sides.start_ids)))


def build_pretrained(cfg, *, folder=None, **_) -> HFSeq2Seq:
    """The registry's builder for PretrainedSeq2SeqConfig: from model.path, or rebuilt offline from a run
    directory's `backbone/` config when `folder` is given (the weights are loaded afterwards)."""
    from luban.data.tokenizers import resolve_pretrained

    if folder is not None:
        return HFSeq2Seq.from_config_dir(str(folder / "backbone"), cfg.trust_remote_code)
    return HFSeq2Seq.from_pretrained(resolve_pretrained(cfg.path, cfg.allow_download, "model.path"),
                                     cfg.allow_download, cfg.trust_remote_code)
