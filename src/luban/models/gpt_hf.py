"""luban's GPT as a Hugging Face causal LM plus a fast tokenizer, so a model trained from scratch loads in
transformers (`AutoModelForCausalLM`, `pipeline("text-generation")`) and in the servers and converters built on it.

Learned absolute positions map to GPT-2 (`GPT2LMHeadModel`), rotary positions to GPT-NeoX (`GPTNeoXForCausalLM`
with sequential residuals and rotary on the whole head). The blocks map one to one (pre-norm LayerNorm, fused
q/k/v, GELU MLP of 4x width, tied or untied output head): GPT-2's Conv1D layers hold the transposed Linear weights;
GPT-NeoX keeps q, k, v per head and rotates channel halves (i, i + d/2) where luban rotates neighbours (2i, 2i + 1),
so each head's query and key channels are reordered (evens, then odds) — attention scores are unchanged. A model
trained without biases gets zero biases, and the activation is the exact GELU luban uses. Character and whitespace
vocabularies become a WordLevel tokenizer that splits the same way; trained subword tokenizers (`tokenizers` JSON)
are carried as they are.
"""

from __future__ import annotations

import torch

from luban.errors import ExportError
from luban.models.gpt import GPT


def to_hf(model: GPT, specials: dict[str, int | None]):
    """The Hugging Face model holding `model`'s weights (fp32): GPT-2 for learned positions, GPT-NeoX for RoPE.
    `specials`: bos/eos/pad token ids for its config."""
    return to_gpt2(model, specials) if model.cfg.positions == "learned" else to_gpt_neox(model, specials)


def _bias(module, n: int) -> torch.Tensor:
    return module.bias.detach() if module.bias is not None else torch.zeros(n)


def _load(hf, sd: dict):
    sd = {k: v.detach().float().contiguous().clone() for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias", "rotary_emb.inv_freq"))]
    if left or unexpected:
        raise ExportError(f"{type(hf).__name__} layout mismatch (missing {left[:3]}, unexpected {unexpected[:3]})")
    return hf.eval()


def to_gpt_neox(model: GPT, specials: dict[str, int | None]):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    c = model.cfg
    d, hd = c.n_embd, c.n_embd // c.n_head
    config = GPTNeoXConfig(vocab_size=c.vocab_size, hidden_size=d, num_hidden_layers=c.n_layer,
                           num_attention_heads=c.n_head, intermediate_size=4 * d, hidden_act="gelu",
                           max_position_embeddings=c.block_size, layer_norm_eps=1e-5, use_parallel_residual=False,
                           attention_bias=True, tie_word_embeddings=c.tie_weights, attention_dropout=0.0,
                           hidden_dropout=0.0, rope_parameters={"rope_type": "default", "rope_theta": c.rope_base,
                                                                "partial_rotary_factor": 1.0},
                           bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"),
                           pad_token_id=specials.get("pad"))
    hf = GPTNeoXForCausalLM(config)
    halves = torch.cat([torch.arange(0, hd, 2), torch.arange(1, hd, 2)])  # neighbours (2i, 2i+1) -> (i, i + hd/2)

    def per_head(t: torch.Tensor) -> torch.Tensor:
        """luban's [q; k; v] rows (or biases) -> GPT-NeoX's per-head [q_h; k_h; v_h], q/k channels reordered."""
        q, k, v = (x.reshape(c.n_head, hd, *x.shape[1:]) for x in t.detach().split(d, dim=0))
        q, k = q[:, halves], k[:, halves]
        return torch.cat([q, k, v], dim=1).reshape(3 * d, *t.shape[1:])

    sd = {"gpt_neox.embed_in.weight": model.wte.weight, "gpt_neox.final_layer_norm.weight": model.ln_f.weight,
          "gpt_neox.final_layer_norm.bias": _bias(model.ln_f, d), "lm_head.weight": model.lm_head.weight}
    for i, b in enumerate(model.blocks):
        p = f"gpt_neox.layers.{i}."
        sd.update({p + "input_layernorm.weight": b.ln_1.weight, p + "input_layernorm.bias": _bias(b.ln_1, d),
                   p + "post_attention_layernorm.weight": b.ln_2.weight,
                   p + "post_attention_layernorm.bias": _bias(b.ln_2, d),
                   p + "attention.query_key_value.weight": per_head(b.attn.qkv.weight),
                   p + "attention.query_key_value.bias": per_head(_bias(b.attn.qkv, 3 * d)),
                   p + "attention.dense.weight": b.attn.proj.weight, p + "attention.dense.bias": _bias(b.attn.proj, d),
                   p + "mlp.dense_h_to_4h.weight": b.mlp.fc.weight, p + "mlp.dense_h_to_4h.bias": _bias(b.mlp.fc, 4 * d),
                   p + "mlp.dense_4h_to_h.weight": b.mlp.proj.weight,
                   p + "mlp.dense_4h_to_h.bias": _bias(b.mlp.proj, d)})
    return _load(hf, sd)


def to_gpt2(model: GPT, specials: dict[str, int | None]):
    """A GPT2LMHeadModel holding a learned-position GPT's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.cfg
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, n_inner=4 * c.n_embd, activation_function="gelu", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=c.tie_weights,
                        bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"),
                        pad_token_id=specials.get("pad"))
    hf = GPT2LMHeadModel(config)
    bias, d = _bias, c.n_embd
    sd = {"transformer.wte.weight": model.wte.weight, "transformer.wpe.weight": model.wpe.weight,
          "transformer.ln_f.weight": model.ln_f.weight, "transformer.ln_f.bias": bias(model.ln_f, d),
          "lm_head.weight": model.lm_head.weight}
    for i, b in enumerate(model.blocks):
        p = f"transformer.h.{i}."
        sd.update({p + "ln_1.weight": b.ln_1.weight, p + "ln_1.bias": bias(b.ln_1, d),
                   p + "ln_2.weight": b.ln_2.weight, p + "ln_2.bias": bias(b.ln_2, d),
                   p + "attn.c_attn.weight": b.attn.qkv.weight.t(), p + "attn.c_attn.bias": bias(b.attn.qkv, 3 * d),
                   p + "attn.c_proj.weight": b.attn.proj.weight.t(), p + "attn.c_proj.bias": bias(b.attn.proj, d),
                   p + "mlp.c_fc.weight": b.mlp.fc.weight.t(), p + "mlp.c_fc.bias": bias(b.mlp.fc, 4 * d),
                   p + "mlp.c_proj.weight": b.mlp.proj.weight.t(), p + "mlp.c_proj.bias": bias(b.mlp.proj, d)})
    return _load(hf, sd)


def hf_tokenizer(encoder):
    """A transformers PreTrainedTokenizerFast that splits text into the same ids as `encoder` (luban's char,
    whitespace or trained subword encoder) and decodes them back the same way."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from luban.data.tokenizers import BOS, EOS, PAD, UNK

    kind = getattr(encoder, "kind", "")
    if getattr(encoder, "tok", None) is not None and kind in ("bpe", "wordpiece", "byte_bpe"):
        tok = Tokenizer.from_str(encoder.tok.to_str())
    elif kind in ("char", "whitespace"):
        tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(encoder.itos)}, unk_token=UNK))
        if kind == "char":
            tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
            tok.decoder = decoders.Fuse()  # characters join without spaces
        else:
            tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # pieces join with one space, as luban's do
        if encoder.cfg.lowercase:
            tok.normalizer = normalizers.Lowercase()
    else:
        raise ExportError(f"a {kind or type(encoder).__name__} tokenizer has no Hugging Face counterpart (char, "
                          "whitespace and trained subword tokenizers export)")
    known = {t for t in (PAD, UNK, BOS, EOS) if encoder.token_id(t) is not None or t == UNK}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=UNK, pad_token=PAD if PAD in known else None,
                                   bos_token=BOS if BOS in known else None, eos_token=EOS if EOS in known else None)


@torch.no_grad()
def check_hf_export(model: GPT, folder, encoder, samples: int = 8, seed: int = 0) -> dict:
    """Load the exported folder back with transformers (offline) and compare: next-token logits on random token
    sequences up to the full window, and the tokenizer's ids on text made of the vocabulary's own pieces."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    g = torch.Generator().manual_seed(seed)
    n_special = 2 + len(getattr(encoder, "specials", ()))  # PAD, UNK, then the task's (BOS, EOS)
    worst = 0.0
    model = model.eval()
    for length in torch.linspace(1, model.cfg.block_size, samples).round().int().tolist():
        ids = torch.randint(n_special, model.cfg.vocab_size, (2, length), generator=g)
        ours = model(ids).float()
        theirs = hf(input_ids=ids).logits.float()
        worst = max(worst, float((ours - theirs).abs().max()))
    pieces = [encoder.decode([i]) for i in range(n_special, min(encoder.vocab_size, n_special + 200))]
    text = ("" if getattr(encoder, "kind", "") == "char" else " ").join(p for p in pieces if p.strip())
    ids = encoder.encode_text(text)
    return {"max_abs_diff": worst, "tokenizer_ids_equal": tok(text, add_special_tokens=False)["input_ids"] == ids,
            "samples": samples, "decoded_equal": tok.decode(ids, skip_special_tokens=True) == encoder.decode(ids)}
