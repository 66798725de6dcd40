"""Reply-only logits: the output head on the scored positions alone gives the full forward's values there, for
luban's GPT, HF causal LMs (plain and LoRA-wrapped), and anything without `logits_at` (a wrapper)."""

import pytest
import torch
import torch.nn.functional as F

from luban.data.chat import IGNORE
from luban.training.preference import sequence_logps
from luban.training.targets import target_logits


def _batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (3, 10), generator=g)
    y = torch.full_like(x, IGNORE)
    y[0, 6:] = x[0, 6:]  # row 0: four reply tokens, row 1: one, row 2: none (all prompt)
    y[1, 9] = 3
    return x, y


def _reference(model, x, y):
    """What the losses computed before: every position's logits, then the targets' rows."""
    logits = model(x).float()
    keep = y != IGNORE
    return logits[keep], F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), ignore_index=IGNORE,
                                         reduction="sum")


def _check(model, vocab):
    x, y = _batch(vocab)
    want_logits, want_loss = _reference(model, x, y)
    logits, targets, row = target_logits(model, x, y)
    assert logits.shape == (5, want_logits.shape[-1]) and row.tolist() == [0, 0, 0, 0, 1]
    torch.testing.assert_close(logits, want_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F.cross_entropy(logits, targets, reduction="sum"), want_loss, rtol=1e-5, atol=1e-5)
    lp, n = sequence_logps(model, x, y)
    assert n.tolist() == [4, 1, 0] and float(lp[2]) == 0.0 and float(lp[0]) < 0
    torch.testing.assert_close(lp.sum(), -want_loss, rtol=1e-5, atol=1e-5)


def test_luban_gpt_head_on_reply_rows_only():
    from luban.models.gpt import GPT
    from luban.models.gpt import GPTSizes

    torch.manual_seed(0)
    model = GPT(GPTSizes(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)).eval()
    _check(model, 37)


@pytest.mark.parametrize("lora", [False, True])
def test_hf_causal_lm_head_on_reply_rows_only(tiny_llama_chat, lora):
    from luban.models.causal_lm import CausalLM, add_lora, load_hf_causal_lm
    from luban.models.causal_lm_config import LoraConfig

    hf = load_hf_causal_lm(str(tiny_llama_chat))
    model = CausalLM(add_lora(hf, LoraConfig(r=4, alpha=8, dropout=0.0)) if lora else hf).eval()
    assert model._head_parts is not None  # llama's head is a plain linear layer: the fast path is taken
    _check(model, hf.config.vocab_size)


def test_gradients_match_the_full_forward(tiny_gpt2):
    """Training through the kept rows moves the weights exactly as the full forward's loss does."""
    from luban.models.causal_lm import CausalLM, load_hf_causal_lm

    model = CausalLM(load_hf_causal_lm(str(tiny_gpt2))).eval()
    x, y = _batch(model.model.config.vocab_size, seed=1)
    logits, targets, _ = target_logits(model, x, y)
    F.cross_entropy(logits, targets, reduction="sum").backward()
    fast = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    _reference(model, x, y)[1].backward()
    for a, b in zip(fast, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_module_without_logits_at_gives_the_same_values():
    from luban.models.gpt import GPT
    from luban.models.gpt import GPTSizes

    torch.manual_seed(0)
    gpt = GPT(GPTSizes(vocab_size=37, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.0)).eval()

    class Wrapper(torch.nn.Module):  # like DDP: forward only
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m(x)

    x, y = _batch(37)
    torch.testing.assert_close(target_logits(Wrapper(gpt), x, y)[0], target_logits(gpt, x, y)[0])
