"""GPT model and model-agnostic decoding: memorization, greedy/top-k/top-p/temperature, stop strings, KV cache,
seeded sampling and streaming. Small and single-threaded."""

from __future__ import annotations

import pytest
import torch

from luban.generation import (GenerationConfig, apply_repetition_penalty, generate, iter_token_ids, stream,
                              top_k_filter, top_p_filter)
from luban.models.gpt import GPT, GPTSizes

TEXT = "the quick brown fox jumps over the lazy dog. "


pytestmark = pytest.mark.usefixtures("one_thread")


class Chars:
    def __init__(self, text):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def encode(self, text):
        return [self.index[c] for c in text]

    def decode(self, ids):
        return "".join(self.chars[i] for i in ids)


def _train(positions: str, steps: int = 150):
    torch.manual_seed(0)
    chars = Chars(TEXT)
    model = GPT(GPTSizes(vocab_size=len(chars.chars), block_size=96, n_layer=2, n_head=2, n_embd=32,
                         positions=positions))
    data = torch.tensor([chars.encode(TEXT * 2)])
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, chars, float(loss.detach())


@pytest.fixture(scope="module")
def trained():
    torch.set_num_threads(1)
    return _train("learned")


def _greedy(model, chars, prompt, n, **kw):
    return generate(model, chars.encode(prompt), GenerationConfig(max_new_tokens=n, temperature=0, **kw),
                    chars.decode)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_tiny_gpt_memorizes_and_greedy_reproduces(positions, trained):
    model, chars, loss = trained if positions == "learned" else _train(positions)
    assert loss < 0.1
    prompt = "the quick"
    target = (TEXT * 2)[len(prompt):len(prompt) + 50]
    result = _greedy(model, chars, prompt, 50)
    assert result.text == target
    assert result.finish_reason == "length" and len(result.token_ids) == 50
    assert result.tokens_per_second > 0


def test_weight_tying_and_sizes():
    tied = GPT(GPTSizes(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    untied = GPT(GPTSizes(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.num_parameters() - tied.num_parameters() == 11 * 8
    with pytest.raises(ValueError):
        GPTSizes(vocab_size=11, n_embd=10, n_head=3)
    with pytest.raises(ValueError):
        tied(torch.zeros(1, 9, dtype=torch.long))  # longer than block_size


def test_top_k_1_equals_greedy(trained):
    model, chars, _ = trained
    greedy = _greedy(model, chars, "the lazy", 40)
    cfg = GenerationConfig(max_new_tokens=40, temperature=1.5, top_k=1, seed=3)
    assert generate(model, chars.encode("the lazy"), cfg, chars.decode).token_ids == greedy.token_ids


def test_temperature_to_zero_behaves_like_greedy():
    torch.manual_seed(1)
    model = GPT(GPTSizes(vocab_size=13, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    decode = lambda ids: "".join(chr(97 + i) for i in ids)
    greedy = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=20, temperature=0), decode)
    for seed in range(3):
        cold = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=20, temperature=1e-5, seed=seed), decode)
        assert cold.token_ids == greedy.token_ids
    # do_sample=False is greedy whatever the temperature
    off = generate(model, [1, 2, 3], GenerationConfig(max_new_tokens=20, temperature=5, do_sample=False), decode)
    assert off.token_ids == greedy.token_ids


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # sorted: 0.5 (1), 0.3 (3), 0.15 (2), 0.05 (0)
    logits = probs.log()
    kept = lambda p: set(torch.isfinite(top_p_filter(logits, p)).nonzero().flatten().tolist())
    assert kept(0.4) == {1}
    assert kept(0.75) == {1, 3}
    assert kept(0.9) == {1, 3, 2}
    assert kept(0.99) == {0, 1, 2, 3}
    assert kept(1.0) == {0, 1, 2, 3}
    assert kept(1e-6) == {1}  # the top token always survives
    # kept logits are unchanged; batch rows are filtered independently
    two = torch.stack([logits, logits.flip(0)])
    out = top_p_filter(two, 0.75)
    assert torch.equal(out[0, [1, 3]], logits[[1, 3]])
    assert set(torch.isfinite(out[1]).nonzero().flatten().tolist()) == {0, 2}


def test_top_k_filter_and_repetition_penalty():
    logits = torch.tensor([1.0, 3.0, -2.0, 2.0])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [False, True, False, True]
    assert torch.equal(top_k_filter(logits, 0), logits)
    penalized = apply_repetition_penalty(logits, [1, 2, 2], 2.0)
    assert penalized.tolist() == [1.0, 1.5, -4.0, 2.0]
    assert torch.equal(apply_repetition_penalty(logits, [1], 1.0), logits)


def test_repetition_penalty_changes_greedy_path(trained):
    model, chars, _ = trained
    plain = _greedy(model, chars, "the quick", 30)
    penalized = _greedy(model, chars, "the quick", 30, repetition_penalty=50.0)
    assert penalized.text != plain.text


def test_stop_strings_stop_and_are_cut(trained):
    model, chars, _ = trained
    result = _greedy(model, chars, "the quick", 60, stop=["lazy"])
    assert result.finish_reason == "stop"
    assert result.text == " brown fox jumps over the "
    assert chars.decode(result.token_ids) == " brown fox jumps over the lazy"
    # the earliest of several stop strings wins; a stop string is a plain str too
    assert _greedy(model, chars, "the quick", 60, stop=["dog", "fox"]).text == " brown "
    assert _greedy(model, chars, "the quick", 60, stop="jumps").text == " brown fox "
    # streaming gives the same text and never leaks the stop string
    cfg = GenerationConfig(max_new_tokens=60, temperature=0, stop=["lazy"])
    pieces = list(stream(model, chars.encode("the quick"), cfg, chars.decode))
    assert "".join(pieces) == result.text and all("l" not in p for p in pieces[-2:])


def test_streaming_yields_pieces_that_join_to_generate(trained):
    model, chars, _ = trained
    cfg = GenerationConfig(max_new_tokens=25, temperature=0.8, top_k=5, seed=7)
    pieces = list(stream(model, chars.encode("the"), cfg, chars.decode))
    assert len(pieces) > 1
    assert "".join(pieces) == generate(model, chars.encode("the"), cfg, chars.decode).text


def test_eos_token_stops():
    torch.manual_seed(2)
    model = GPT(GPTSizes(vocab_size=7, block_size=16, n_layer=1, n_head=1, n_embd=8)).eval()
    decode = lambda ids: "".join(str(i) for i in ids)
    first = generate(model, [0], GenerationConfig(max_new_tokens=5, temperature=0), decode).token_ids[0]
    result = generate(model, [0], GenerationConfig(max_new_tokens=5, temperature=0, eos_token_id=first), decode)
    assert result.finish_reason == "eos" and result.token_ids == [first] and result.text == ""


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_kv_cache_matches_no_cache(positions):
    torch.manual_seed(4)
    model = GPT(GPTSizes(vocab_size=17, block_size=12, n_layer=2, n_head=2, n_embd=16, positions=positions)).eval()
    prompt = [3, 1, 4, 1, 5]
    # logits: one full pass equals prefill + one token at a time through the cache
    ids = torch.tensor([prompt + [9, 2, 6]])
    full = model(ids)
    logits, cache = model(ids[:, :5], use_cache=True)
    steps = [logits]
    logits, cache = model(ids[:, 5:7], past=cache, use_cache=True)  # several new tokens after a cache
    steps.append(logits)
    logits, cache = model(ids[:, 7:], past=cache, use_cache=True)
    steps.append(logits)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    # decoding: identical tokens with and without the cache, also past block_size (the window slides)
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_p": 0.9, "seed": 5}):
        with_cache = list(iter_token_ids(model, prompt, GenerationConfig(max_new_tokens=20, use_cache=True, **kw)))
        no_cache = list(iter_token_ids(model, prompt, GenerationConfig(max_new_tokens=20, use_cache=False, **kw)))
        assert with_cache == no_cache and len(with_cache) == 20


def test_seeded_sampling_is_reproducible(trained):
    model, chars, _ = trained
    cfg = lambda seed: GenerationConfig(max_new_tokens=40, temperature=2.0, top_p=0.95, seed=seed)
    a = generate(model, chars.encode("the"), cfg(11), chars.decode)
    torch.manual_seed(123)  # the global RNG plays no part
    b = generate(model, chars.encode("the"), cfg(11), chars.decode)
    c = generate(model, chars.encode("the"), cfg(12), chars.decode)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_bad_generation_settings():
    for kw in ({"temperature": -1}, {"top_p": 0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": -1},
               {"repetition_penalty": 0}, {"stop": [""]}):
        with pytest.raises(ValueError):
            GenerationConfig(**kw)
    model = GPT(GPTSizes(vocab_size=5, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError):
        generate(model, [], GenerationConfig(), str)


def test_hf_causal_lm_adapter_cache_agrees():
    transformers = pytest.importorskip("transformers")
    from luban.models.causal_lm import CausalLM

    torch.manual_seed(0)
    conf = transformers.GPT2Config(vocab_size=23, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    hf = CausalLM(transformers.GPT2LMHeadModel(conf)).eval()
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 5, "seed": 1}):
        with_cache = list(iter_token_ids(hf, [1, 2, 3], GenerationConfig(max_new_tokens=20, **kw)))
        no_cache = list(iter_token_ids(hf, [1, 2, 3], GenerationConfig(max_new_tokens=20, use_cache=False, **kw)))
        assert with_cache == no_cache


def _solo_and_batched(model, rows, decode, join_at: dict | None = None):
    """Each row decoded alone, and all in one BatchDecoder (rows listed in join_at {row: step} join later)."""
    from luban.generation.batch import BatchDecoder
    from luban.generation.decoding import step_events

    join_at = join_at or {}
    solo = [list(step_events(model, p, cfg, decode)) for p, cfg in rows]
    first = [r for i, r in enumerate(rows) if i not in join_at]
    order = [i for i in range(len(rows)) if i not in join_at]
    dec, batched, sizes, step = BatchDecoder(model, first, decode), [[] for _ in rows], [], 0
    while not dec.done or any(s >= step for s in join_at.values()):
        for i, s in join_at.items():
            if s == step:
                order += [i]
                dec.add([rows[i]])
        for r, *ev in dec.step():
            batched[order[r]].append(tuple(ev))
        sizes.append(list(dec.forward_sizes))
        step += 1
    return solo, batched, sizes


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_batched_decoding_gives_each_row_its_own_output(positions):
    model, chars, _ = _train(positions, steps=60)
    enc = chars.encode
    rows = [(enc("the quick"), GenerationConfig(max_new_tokens=12, do_sample=False)),
            (enc("dog"), GenerationConfig(max_new_tokens=20, temperature=0.9, top_k=5, seed=3)),
            (enc("over the la"), GenerationConfig(max_new_tokens=30, top_p=0.8, seed=1, stop=["the"])),
            (enc("fox"), GenerationConfig(max_new_tokens=6, repetition_penalty=1.3, seed=5)),
            # 39 + 70 > the 96-position window: batched until the window is full, then alone with a sliding window
            (enc("the lazy dog. the quick brown fox jumps"), GenerationConfig(max_new_tokens=70, do_sample=False)),
            (enc("the"), GenerationConfig(max_new_tokens=15, temperature=0.8, seed=9)),  # joins at step 3
            (enc("jumps over"), GenerationConfig(max_new_tokens=25, seed=11)),  # joins at step 10
            (enc(TEXT * 3)[:100], GenerationConfig(max_new_tokens=62, seed=12))]  # past the window from the start
    solo, batched, sizes = _solo_and_batched(model, rows, chars.decode, join_at={5: 3, 6: 10})
    assert batched == solo  # same tokens, pieces and finish reasons, row by row
    assert solo[2][-1][2] == "stop" and solo[0][-1][2] == "length"
    assert sizes[0] == [1, 5]  # the too-long prompt's window, and one prefill of the five others
    assert sizes[3] == [5, 1, 1] and sizes[10][-1] == 1  # cache batch, sliding window, a joining row's prefill
    assert sizes[4][0] == 6  # merged: one forward for all
    assert [2] in sizes  # later the long row's window is full too: both slide in one forward
    assert sizes[-7:] == [[1]] * 7  # the long row, alone at the end


def test_batched_decoding_on_a_hugging_face_model_and_cancel(tiny_gpt2):
    transformers = pytest.importorskip("transformers")
    from luban.generation.batch import BatchDecoder
    from luban.models.causal_lm import CausalLM

    model = CausalLM(transformers.AutoModelForCausalLM.from_pretrained(str(tiny_gpt2))).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_gpt2))
    rows = [(tok.encode(p), GenerationConfig(max_new_tokens=8, temperature=0.7, seed=i))
            for i, p in enumerate(["hello there", "a", "what is the weather like today", "b c"])]
    solo, batched, sizes = _solo_and_batched(model, rows, tok.decode, join_at={3: 2})
    assert batched == solo and sizes[0] == [3] and sizes[3][0] == 4  # joined the cache of an HF model
    dec = BatchDecoder(model, rows, tok.decode)
    dec.step()
    dec.cancel(1)
    seen = {i for _ in range(3) for i, *_ in dec.step()}
    assert seen == {0, 2, 3} and dec.batch_size == 3
