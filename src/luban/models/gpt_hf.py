"""luban's GPT as a Hugging Face GPT-2: `GPT2LMHeadModel` weights plus a fast tokenizer, so a model trained from
scratch loads in transformers (`AutoModelForCausalLM`, `pipeline("text-generation")`) and in the servers and
converters built on it.

The blocks map one to one (pre-norm LayerNorm, fused q/k/v, GELU MLP of 4x width, tied or untied output head):
GPT-2's Conv1D layers hold the transposed Linear weights, a model trained without biases gets zero biases, and the
activation is the exact GELU luban uses (`activation_function: gelu`, not GPT-2's tanh approximation). Learned
absolute positions only: a RoPE model has no GPT-2 counterpart. Character and whitespace vocabularies become a
WordLevel tokenizer that splits the same way; trained subword tokenizers (`tokenizers` JSON) are carried as they are.
"""

from __future__ import annotations

import torch

from luban.errors import ExportError
from luban.models.gpt import GPT


def to_gpt2(model: GPT, specials: dict[str, int | None]):
    """A GPT2LMHeadModel holding `model`'s weights (fp32). `specials`: bos/eos/pad token ids for its config."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.cfg
    if c.positions != "learned":
        raise ExportError("a GPT with rotary positions (model.positions: rope) has no GPT-2 counterpart; the Hugging "
                          "Face export covers learned positions")
    config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                        n_head=c.n_head, n_inner=4 * c.n_embd, activation_function="gelu", layer_norm_epsilon=1e-5,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=c.tie_weights,
                        bos_token_id=specials.get("bos"), eos_token_id=specials.get("eos"),
                        pad_token_id=specials.get("pad"))
    hf = GPT2LMHeadModel(config)

    def bias(module, n: int) -> torch.Tensor:
        return module.bias.detach() if module.bias is not None else torch.zeros(n)

    d = c.n_embd
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
    sd = {k: v.detach().float().contiguous().clone() for k, v in sd.items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    left = [k for k in missing if not k.endswith(("attn.bias", "attn.masked_bias"))]
    if left or unexpected:
        raise ExportError(f"GPT-2 layout mismatch (missing {left[:3]}, unexpected {unexpected[:3]})")
    return hf.eval()


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
def check_gpt2(model: GPT, folder, encoder, samples: int = 8, seed: int = 0) -> dict:
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
    same_ids = tok(text, add_special_tokens=False)["input_ids"] == encoder.encode_text(text)
    return {"max_abs_diff": worst, "tokenizer_ids_equal": bool(same_ids), "samples": samples,
            "decoded_equal": tok.decode(encoder.encode_text(text), skip_special_tokens=True) ==
            encoder.decode(encoder.encode_text(text))}
