"""Preference training (DPO / IPO / hinge) of pretrained causal LMs: losses against hand-computed values, the
encoding of pairs, a LoRA run that learns a prompt-dependent preference, evaluation of the run, and bad input."""

import json
import math
import shutil

import pytest
import torch
from conftest import assert_no_run, write_jsonl
from test_text_generation import hf_config

import luban
from luban.config import PreferenceConfig
from luban.errors import ConfigError, DataError
from luban.training.preference import objective, preference_loss, preference_metrics, sequence_logps

# (chosen, rejected) log-probability sums and token counts of three pairs
POLICY = torch.tensor([[-2.0, -5.0], [-4.0, -3.0], [-1.0, -1.5]])
REFERENCE = torch.tensor([[-3.0, -4.0], [-4.5, -3.5], [-1.0, -1.0]])
COUNTS = torch.tensor([[2, 4], [4, 6], [1, 1]])


def test_losses_and_metrics_equal_hand_computed_values():
    margins = [(-2 + 3) - (-5 + 4), (-4 + 4.5) - (-3 + 3.5), (-1 + 1) - (-1.5 + 1)]  # 2, 0, 0.5
    cfg = PreferenceConfig(beta=0.5)
    want = [math.log1p(math.exp(-0.5 * m)) for m in margins]  # -log sigmoid(beta * margin)
    assert preference_loss(POLICY, REFERENCE, COUNTS, cfg).tolist() == pytest.approx(want, rel=1e-6)
    smooth = PreferenceConfig(beta=0.5, label_smoothing=0.1)
    assert preference_loss(POLICY, REFERENCE, COUNTS, smooth).tolist() == pytest.approx(
        [0.9 * w + 0.1 * math.log1p(math.exp(0.5 * m)) for w, m in zip(want, margins)], rel=1e-6)
    hinge = PreferenceConfig(beta=0.5, loss="hinge")
    assert preference_loss(POLICY, REFERENCE, COUNTS, hinge).tolist() == pytest.approx([0.0, 1.0, 0.75])
    ipo = PreferenceConfig(beta=0.5, loss="ipo")  # per-token log-ratios: (1/2, -1/4), (1/8, 1/12), (0, -1/2)
    assert preference_loss(POLICY, REFERENCE, COUNTS, ipo).tolist() == pytest.approx(
        [(0.75 - 1) ** 2, (1 / 24 - 1) ** 2, (0.5 - 1) ** 2])
    # reference-free, on per-token log-likelihoods: chosen (-1, -1, -1), rejected (-1.25, -0.5, -1.5)
    simpo = PreferenceConfig(beta=2.0, loss="simpo", simpo_gamma=0.5)
    assert preference_loss(POLICY, REFERENCE, COUNTS, simpo).tolist() == pytest.approx(
        [math.log1p(math.exp(-(2.0 * d - 0.5))) for d in (0.25, -0.5, 0.5)], rel=1e-6)

    def log_odds(p):
        return math.log(p / (1 - p))

    orpo = PreferenceConfig(beta=0.5, loss="orpo")
    assert preference_loss(POLICY, REFERENCE, COUNTS, orpo).tolist() == pytest.approx(
        [1 + 0.5 * math.log1p(math.exp(-(log_odds(math.exp(-1)) - log_odds(math.exp(r)))))
         for r in (-1.25, -0.5, -1.5)], rel=1e-6)
    m = preference_metrics(POLICY, REFERENCE, COUNTS, simpo)
    assert m["chosen_reward"] == pytest.approx(-2.0) and m["reward_accuracy"] == pytest.approx(2 / 3)
    rpo = PreferenceConfig(beta=0.5, sft_weight=2.0)  # + 2 x the chosen replies' mean token loss: 7 nats / 7 tokens
    assert float(objective(POLICY, REFERENCE, COUNTS, rpo)) == pytest.approx(sum(want) / 3 + 2.0, rel=1e-6)

    m = preference_metrics(POLICY, REFERENCE, COUNTS, cfg)
    assert m["reward_accuracy"] == pytest.approx(2 / 3)  # the middle pair's rewards tie: a miss
    assert m["reward_margin"] == pytest.approx(0.5 * sum(margins) / 3)
    assert m["chosen_reward"] == pytest.approx(0.5 * (1 + 0.5 + 0) / 3)
    assert m["logp_accuracy"] == pytest.approx(2 / 3)  # per token: -1 > -1.25, -1 < -0.5, -1 > -1.5
    assert m["chosen_loss"] == pytest.approx(7 / 7) and m["pairs"] == 3
    assert m["loss"] == m["preference_loss"] == pytest.approx(sum(want) / 3)
    assert preference_metrics(POLICY, REFERENCE, COUNTS, rpo)["loss"] == pytest.approx(sum(want) / 3 + 2.0)
    before = preference_metrics(REFERENCE, REFERENCE, COUNTS, cfg)  # the reference against itself
    assert before["loss"] == pytest.approx(math.log(2)) and before["reward_accuracy"] == 0.0


def test_sequence_logps_sum_only_the_trained_targets():
    torch.manual_seed(0)
    table = torch.randn(7, 11)

    class Bigram(torch.nn.Module):
        def forward(self, x):
            return table[x]

    x = torch.tensor([[1, 2, 3, 4], [5, 6, 0, 0]])
    y = torch.tensor([[-100, 3, 4, 9], [6, -100, -100, -100]])
    lp, n = sequence_logps(Bigram(), x, y)
    logp = table.log_softmax(-1)
    assert n.tolist() == [3, 1]
    assert lp.tolist() == pytest.approx([float(logp[2, 3] + logp[3, 4] + logp[4, 9]), float(logp[5, 6])], rel=1e-6)


def test_replies_are_encoded_after_the_prompt_or_conversation(tiny_llama_chat, tiny_gpt2):
    from luban.config import TokenizerConfig
    from luban.data.chat import IGNORE, ChatFormatter
    from luban.data.tokenizers import build_encoder

    enc = build_encoder(TokenizerConfig(type="pretrained"), str(tiny_llama_chat))
    ids, labels = ChatFormatter(enc).encode_reply([{"role": "user", "content": "hello"}], "hello world")
    assert enc.tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == "hello world<|im_end|>\n"
    assert enc.tok.decode(ids).startswith("<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n")
    plain = build_encoder(TokenizerConfig(type="pretrained"), str(tiny_gpt2))
    ids, labels = ChatFormatter(plain).encode_reply([{"role": "user", "content": "hi"}], "the cat")
    assert plain.tok.decode(ids) == "user: hi\nassistant: the cat<|endoftext|>"
    assert plain.tok.decode([i for i, lab in zip(ids, labels) if lab != IGNORE]) == "the cat<|endoftext|>"


def animal_pairs(n: int) -> list[dict]:
    """The reply the prompt's animal makes is preferred; both replies occur after both animals."""
    heads = ["look, the", "today the", "a", "my", "that", "hello, the", "your", "one"]
    out = []
    for i in range(n):
        cat = i % 2 == 0
        out.append({"prompt": f"{heads[(i // 2) % len(heads)]} {'cat' if cat else 'dog'} says",
                    "chosen": " meow" if cat else " woof", "rejected": " woof" if cat else " meow"})
    return out


def test_dpo_lora_learns_the_prompts_preference_and_the_run_evaluates(tiny_gpt2, tmp_path):
    train = write_jsonl(tmp_path / "pairs.jsonl", animal_pairs(48))
    test = write_jsonl(tmp_path / "test.jsonl", animal_pairs(16))
    base_dir = tmp_path / "base"
    shutil.copytree(tiny_gpt2, base_dir)
    cfg = hf_config(tmp_path / "runs", "dpo", base_dir, train,
                    trainer={"epochs": 20, "lr": 1e-2, "preference": {"beta": 1.0}},
                    data={"test": str(test), "columns": {"prompt": "prompt", "chosen": "chosen",
                                                         "rejected": "rejected"}})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    base = m["baseline"]
    assert base["name"].startswith("the pretrained model before preference training")
    assert base["test"]["loss"] == pytest.approx(math.log(2)) and base["test"]["reward_accuracy"] == 0.0
    assert m["test"]["reward_accuracy"] == 1.0 and m["test"]["logp_accuracy"] == 1.0
    assert base["test"]["logp_accuracy"] < 0.9  # the untrained model does not tell the animals apart
    assert m["test"]["loss"] < 0.3 * math.log(2) and m["test"]["reward_margin"] > 0
    assert m["data"]["unit"] == "pairs" and m["data"]["splits"]["test"] == 16

    model = luban.load(run)  # adapters merged into a plain HF folder
    again = model.evaluate(test)  # the reference is read back from model.path: the run's own test figures
    assert again["reward_accuracy"] == 1.0 and again["logp_accuracy"] == 1.0
    assert again["loss"] == pytest.approx(m["test"]["loss"], rel=1e-3, abs=1e-4)
    shutil.rmtree(base_dir)  # the reference is gone: the figures that need none, and why the others are missing
    alone = model.evaluate(test)
    assert alone["logp_accuracy"] == 1.0 and "reward_accuracy" not in alone
    assert "the reference model did not load" in alone["note"]


@pytest.mark.parametrize("loss", ["ipo", "simpo", "orpo"])
def test_preference_on_conversations_with_a_chat_template(tiny_llama_chat, tmp_path, loss):
    rows = [{"messages": [{"role": "user", "content": r["prompt"]}], "chosen": r["chosen"], "rejected": r["rejected"]}
            for r in animal_pairs(32)]
    data = write_jsonl(tmp_path / "c.jsonl", rows)
    run = luban.train(hf_config(tmp_path / "runs", "chat", tiny_llama_chat, data,
                                model={"finetune": "full"},
                                trainer={"epochs": 4, "lr": 3e-3, "preference": {"loss": loss, "beta": 0.5}},
                                data={"columns": {"messages": "messages", "chosen": "chosen",
                                                  "rejected": "rejected"}}), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    before = m["baseline"]["validation"]  # the model as loaded, under the same loss
    assert m["validation"]["preference_loss"] < before["preference_loss"]
    assert m["validation"]["reward_margin"] > before["reward_margin"]
    model = luban.load(run)
    reply = model.chat([{"role": "user", "content": "my cat says"}], temperature=0, max_new_tokens=2)
    assert reply["tokens"] >= 1
    again = model.evaluate(data)  # every pair, trained ones included: rewards from the run's own loss
    assert again["pairs"] == len(rows) and "note" not in again and again["reward_margin"] > before["reward_margin"]


def test_bad_preference_input(tiny_gpt2, tmp_path):
    out = tmp_path / "runs"
    cols = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    same = write_jsonl(tmp_path / "same.jsonl", animal_pairs(10) + [{"prompt": "a", "chosen": " x", "rejected": " x"}])
    with pytest.raises(DataError, match=r"same.jsonl: line 11: fields 'chosen' and 'rejected' are the same text"):
        luban.train(hf_config(out, "same", tiny_gpt2, same, data={"columns": cols}), quiet=True)
    empty = write_jsonl(tmp_path / "empty.jsonl", animal_pairs(10) + [{"prompt": "a", "chosen": " ", "rejected": "y"}])
    with pytest.raises(DataError, match=r"empty.jsonl: line 11: field 'chosen': empty reply"):
        luban.train(hf_config(out, "empty", tiny_gpt2, empty, data={"columns": cols}), quiet=True)
    turn = write_jsonl(tmp_path / "turn.jsonl", [{"messages": [{"role": "assistant", "content": "hi"}],
                                                 "chosen": "a", "rejected": "b"}] * 10)
    with pytest.raises(DataError, match="must end with a user turn"):
        luban.train(hf_config(out, "turn", tiny_gpt2, turn, data={"columns": {
            "messages": "messages", "chosen": "chosen", "rejected": "rejected"}}), quiet=True)
    good = write_jsonl(tmp_path / "good.jsonl", animal_pairs(10))
    with pytest.raises(ConfigError, match="needs both chosen and rejected"):
        luban.train(hf_config(out, "half", tiny_gpt2, good, data={"columns": {"prompt": "prompt",
                                                                              "chosen": "chosen"}}), quiet=True)
    with pytest.raises(ConfigError, match="starts from a pretrained causal LM"):
        luban.train(hf_config(out, "none", tiny_gpt2, good, data={"columns": cols}, model={"finetune": "none"}),
                    quiet=True)
    for name in ("same", "empty", "turn", "half", "none"):
        assert_no_run(out, name)
