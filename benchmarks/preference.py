"""Preference training (DPO) benchmark: steer a review generator toward positive reviews, judged by a classifier.

    python benchmarks/preference.py --data ../shared/data/chnsenticorp

The DPO paper's "controlled sentiment generation" experiment, on ChnSentiCorp and entirely with luban:
1. the judge: the ChnSentiCorp sentiment classifier (examples/chnsenticorp.yaml);
2. the base model: a character GPT pretrained on the training reviews (corpus mode), exported with
   `luban export --format hf` as a Hugging Face GPT-2 — the `model.path` of what follows;
3. preference pairs: for each of `--pair-prompts` review openings (the first `--prefix` characters of training
   reviews) the base model samples two continuations; the one the judge finds more positive is chosen (pairs whose
   two scores differ by less than 0.1 are dropped);
4. DPO (`columns: {prompt, chosen, rejected}`) and, as the classical baseline, supervised fine-tuning on the chosen
   continuations only (best-of-2 rejection sampling), with the same optimizer settings;
5. each model continues `--eval-prompts` openings of test reviews (one sample each, same seed); the judge's mean
   positive probability and positive rate are the figures, and each model's per-character loss on 300 real test
   reviews shows how far it drifted from the language of the reviews.

With a real instruct model as the base (`--base starter-smollm2`, or any causal-LM folder) step 2 is skipped: the
prompts become chat instructions ("Continue this movie review: <opening>"), the base is that model as imported
(a `finetune: none` run), DPO and the SFT baseline train LoRA adapters on it, the judge scores the replies, and the
drift is the per-token loss of real reviews (plain text, no template). SmolLM2 is English: use it with SST-2
(`--data ../shared/data/sst2`, the judge then is examples/sst2_student_textcnn.yaml).

    python benchmarks/preference.py --data ../shared/data/sst2 --base starter-smollm2 --pair-prompts 300 \
        --eval-prompts 150 --tokens 32
"""

import argparse
import csv
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, tsv_folder_overrides, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def reviews(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig") as f:
        header = f.readline().rstrip("\n").split("\t")
        col = next(c for c in ("text_a", "sentence", "text") if c in header)
        f.seek(0)  # ChnSentiCorp (text_a) reads with csv quoting as before; SST-2's quotes are text
        rows = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL if col == "text_a" else csv.QUOTE_NONE)
        return [r[col].strip() for r in rows if r[col].strip()]


def opening(text: str, prefix: int) -> str:
    """The first `prefix` characters (Chinese), or the first `prefix` words of a text written with spaces."""
    if sum(c.isascii() for c in text) < 0.8 * len(text):
        return text[:prefix]
    return " ".join(text.split()[:prefix])


def openings(texts: list[str], n: int, prefix: int) -> list[str]:
    out, seen = [], set()
    for t in texts:
        p = opening(t, prefix)
        if len(t) >= len(p) + 10 and p not in seen:
            seen.add(p)
            out.append(p)
        if len(out) == n:
            break
    return out


def sample(model, prompts: list[str], tokens: int, seed: int) -> list[str]:
    import torch

    torch.manual_seed(seed)  # unseeded requests draw from the global generator: same seed, same draws
    return [r["text"] for r in model.predict(prompts, temperature=1.0, top_k=0, max_new_tokens=tokens)]


def positive(judge, texts: list[str]) -> list[float]:
    return [r["probabilities"]["1"] for r in judge.predict(texts)]


INSTRUCTION = "Continue this movie review in one or two sentences: "  # --base: the chat prompt before the opening


def char_loss(hf_folder: Path, texts: list[str]) -> float:
    """Mean next-character loss of real reviews (each after the end-of-text separator) under an HF model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(hf_folder))
    model = AutoModelForCausalLM.from_pretrained(str(hf_folder)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([[tok.eos_token_id] + tok(t, add_special_tokens=False)["input_ids"][:63]])
            logits = model(ids).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    return total / count


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def judged_pairs(prompts, first, second, s1, s2) -> list[dict]:
    """(prompt, chosen, rejected): the sample the judge finds more positive is chosen; close calls are dropped."""
    pairs = []
    for p, t1, t2, x1, x2 in zip(prompts, first, second, s1, s2):
        if abs(x1 - x2) >= 0.1 and t1.strip() and t2.strip() and t1 != t2:
            chosen, rejected = (t1, t2) if x1 > x2 else (t2, t1)
            pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected})
    return pairs


def dpo_and_sft(pairs: list[dict], out: Path, config) -> dict:
    """DPO on the pairs and SFT on their chosen replies; config(name, train file, columns) -> the run's config.
    Returns {name: (run, metrics, seconds)}."""
    import luban

    pairs_file = write_jsonl(out / "pairs.jsonl", pairs)
    sft_file = write_jsonl(out / "chosen.jsonl", [{"prompt": r["prompt"], "response": r["chosen"]} for r in pairs])
    runs = {}
    for name, train, columns in (("dpo", pairs_file, {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}),
                                 ("sft_chosen", sft_file, {"prompt": "prompt", "response": "response"})):
        t1 = time.perf_counter()
        run = luban.train(config(name, train, columns), quiet=True)
        runs[name] = (run, json.loads((run / "metrics.json").read_text(encoding="utf-8")),
                      time.perf_counter() - t1)
    return runs


def run_figures(runs: dict) -> dict:
    """The DPO run's held-out preference metrics (after, and the reference's before) and both runs' seconds."""
    dpo_m = runs["dpo"][1]
    return {"dpo_val": {k: round(dpo_m["validation"][k], 4) for k in ("reward_accuracy", "reward_margin",
                                                                       "logp_accuracy", "preference_loss")},
            "dpo_val_before": {k: round(dpo_m["baseline"]["validation"][k], 4) for k in ("logp_accuracy",
                                                                                           "preference_loss")},
            "dpo_seconds": round(runs["dpo"][2], 1), "sft_seconds": round(runs["sft_chosen"][2], 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="ChnSentiCorp folder: train.tsv, dev.tsv, test.tsv")
    ap.add_argument("--pair-prompts", type=int, default=1000)
    ap.add_argument("--eval-prompts", type=int, default=300)
    ap.add_argument("--prefix", type=int, default=6, help="characters of a review given as the prompt")
    ap.add_argument("--tokens", type=int, default=48, help="characters generated per continuation")
    ap.add_argument("--lm-steps", type=int, default=1500, help="pretraining steps of the base GPT")
    ap.add_argument("--base", help="a real pretrained causal LM instead of the char GPT: a folder or a starter name "
                                   "(starter-smollm2); DPO and SFT then train LoRA adapters on it")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=None, help="default 1e-4 (full, char GPT) / 2e-4 (LoRA, --base)")
    ap.add_argument("--judge-epochs", type=int, default=None)
    ap.add_argument("--judge-config", default=None, help="--base: the judge's example config (default: "
                    "sst2_student_textcnn.yaml for SST-2, chnsenticorp.yaml otherwise)")
    ap.add_argument("--judge-limit", type=int, default=None, help="--base: the judge's training rows (first N)")
    ap.add_argument("--drift-texts", type=int, default=300, help="--base: real test reviews the drift loss reads")
    a = ap.parse_args()
    if a.base is not None:
        return main_real_base(a)

    import luban
    from luban.compress.export import export_hf_run

    data, out = Path(a.data).resolve(), work_dir()
    t_all = time.perf_counter()
    judge_run, judge_m, _ = train_run(ROOT / "examples" / "chnsenticorp.yaml", tsv_folder_overrides(data), out=out,
                                      name="judge", quiet=True)
    judge = luban.load(judge_run)

    steps_per_epoch = 100
    lm_run, lm_m, lm_seconds = train_run(ROOT / "examples" / "char_lm_shakespeare.yaml", [
        f"data.train={data / 'train.tsv'}", f"data.validation={data / 'dev.tsv'}", f"data.test={data / 'test.tsv'}",
        "data.columns.text=text_a", f"trainer.epochs={max(1, a.lm_steps // steps_per_epoch)}",
        f"trainer.steps_per_epoch={steps_per_epoch}", "trainer.batch_size=16", "generation.sample_tokens=0"], out=out, name="review_gpt", quiet=True)
    export_hf_run(lm_run, quiet=True)
    base_hf = lm_run / "model" / "hf"
    base = luban.load(lm_run)

    t0 = time.perf_counter()
    prompts = openings(reviews(data / "train.tsv"), a.pair_prompts, a.prefix)
    first, second = sample(base, prompts, a.tokens, seed=1), sample(base, prompts, a.tokens, seed=2)
    s1 = positive(judge, [p + t for p, t in zip(prompts, first)])
    s2 = positive(judge, [p + t for p, t in zip(prompts, second)])
    pairs = judged_pairs(prompts, first, second, s1, s2)
    pair_seconds = time.perf_counter() - t0

    common = {"task": "text_generation", "seed": 0,
              "preprocessing": {"tokenizer": {"max_length": 64}},
              "model": {"type": "pretrained_lm", "path": str(base_hf), "finetune": "full"},
              "trainer": {"epochs": 3, "batch_size": 16, "lr": 1e-4, "weight_decay": 0.0, "scheduler": "linear",
                          "warmup_ratio": 0.1},
              "generation": {"sample_tokens": 0}, "output": {"dir": str(out), "tensorboard": False}}

    def config(name, train, columns):
        cfg = json.loads(json.dumps(common))
        cfg["data"] = {"train": str(train), "columns": columns, "split": {"validation": 0.1, "test": 0.1}}
        cfg["output"]["name"] = name
        return cfg

    runs = dpo_and_sft(pairs, out, config)

    eval_prompts = openings(reviews(data / "test.tsv"), a.eval_prompts, a.prefix)
    real = reviews(data / "test.tsv")[:a.drift_texts]
    result = {}
    for name, model, hf in (("base", base, base_hf), ("sft_chosen", luban.load(runs["sft_chosen"][0]),
                                                       runs["sft_chosen"][0] / "model" / "hf"),
                            ("dpo", luban.load(runs["dpo"][0]), runs["dpo"][0] / "model" / "hf")):
        texts = sample(model, eval_prompts, a.tokens, seed=0)
        scores = positive(judge, [p + t for p, t in zip(eval_prompts, texts)])
        result[name] = {"mean_positive": round(sum(scores) / len(scores), 4),
                        "positive_rate": round(sum(s > 0.5 for s in scores) / len(scores), 4),
                        "real_review_char_loss": round(char_loss(hf, real), 4),
                        "examples": [p + t for p, t in zip(eval_prompts[:3], texts[:3])]}
    emit({"dataset": data.name, "judge_test_accuracy": round(judge_m["test"]["accuracy"], 4),
          "base_val_loss": round(lm_m["validation"]["loss"], 4), "base_train_seconds": round(lm_seconds, 1),
          "pairs": len(pairs), "pair_prompts": len(prompts), "pair_sampling_seconds": round(pair_seconds, 1),
          **run_figures(runs),
          "eval_prompts": len(eval_prompts), **result,
          "total_seconds": round(time.perf_counter() - t_all, 1), "peak_rss_mb": peak_rss_mb()})


def main_real_base(a):
    """The same experiment with a real instruct model as the base (see the module docstring)."""
    import luban
    from luban.data.tokenizers import resolve_pretrained

    data, out = Path(a.data).resolve(), work_dir()
    t_all = time.perf_counter()
    judge_cfg = a.judge_config or ("sst2_student_textcnn.yaml" if "sst2" in data.name else "chnsenticorp.yaml")
    judge_over = tsv_folder_overrides(data) + ([f"trainer.epochs={a.judge_epochs}"] if a.judge_epochs else []) \
        + ([f"data.train_limit={a.judge_limit}"] if a.judge_limit else [])
    judge_run, judge_m, _ = train_run(ROOT / "examples" / judge_cfg, judge_over, out=out, name="judge", quiet=True)
    judge = luban.load(judge_run)
    base_hf = Path(resolve_pretrained(a.base, False, "--base"))

    train_texts = reviews(data / "train.tsv")
    prompts = openings(train_texts, a.pair_prompts, a.prefix)
    lr = a.lr or 2e-4
    common = {"task": "text_generation", "seed": 0,
              "preprocessing": {"tokenizer": {"max_length": 128}},
              "model": {"type": "pretrained_lm", "path": str(base_hf), "finetune": "lora",
                        "lora": {"r": 16, "alpha": 32, "dropout": 0.0}},
              "trainer": {"epochs": a.epochs, "batch_size": 8, "lr": lr, "weight_decay": 0.0, "scheduler": "linear",
                          "warmup_ratio": 0.1},
              "generation": {"sample_tokens": 0}, "output": {"dir": str(out), "tensorboard": False}}

    def config(name, train, columns, **model):
        cfg = json.loads(json.dumps(common))
        cfg["data"] = {"train": str(train), "columns": columns, "split": {"validation": 0.1, "test": 0.1}}
        cfg["model"].update(model)
        cfg["output"]["name"] = name
        return cfg

    # the base as imported, as a luban run (its chat template, its predictor): real reviews as prompt/response rows
    real_rows = []
    for t in train_texts[-200:]:
        op = opening(t, a.prefix)
        rest = t[len(op):].strip() if t.startswith(op) else " ".join(t.split()[a.prefix:])
        if rest:
            real_rows.append({"prompt": INSTRUCTION + op, "response": rest})
    base_run = luban.train(config("base", write_jsonl(out / "base.jsonl", real_rows),
                                  {"prompt": "prompt", "response": "response"}, finetune="none")
                           | {"evaluation": {"baseline": False}}, quiet=True)
    base = luban.load(base_run)

    t0 = time.perf_counter()
    chat_prompts = [INSTRUCTION + p for p in prompts]
    first, second = sample(base, chat_prompts, a.tokens, seed=1), sample(base, chat_prompts, a.tokens, seed=2)
    s1, s2 = positive(judge, first), positive(judge, second)
    pairs = judged_pairs(chat_prompts, first, second, s1, s2)
    pair_seconds = time.perf_counter() - t0
    runs = dpo_and_sft(pairs, out, config)

    eval_prompts = [INSTRUCTION + p for p in openings(reviews(data / "test.tsv"), a.eval_prompts, a.prefix)]
    real = reviews(data / "test.tsv")[:a.drift_texts]
    result = {}
    for name, model, hf in (("base", base, base_hf),
                            ("sft_chosen", luban.load(runs["sft_chosen"][0]), runs["sft_chosen"][0] / "model" / "hf"),
                            ("dpo", luban.load(runs["dpo"][0]), runs["dpo"][0] / "model" / "hf")):
        texts = sample(model, eval_prompts, a.tokens, seed=0)
        scores = positive(judge, texts)
        result[name] = {"mean_positive": round(sum(scores) / len(scores), 4),
                        "positive_rate": round(sum(s > 0.5 for s in scores) / len(scores), 4),
                        "real_review_token_loss": round(char_loss(hf, real), 4),
                        "examples": [{"prompt": p, "reply": t} for p, t in zip(eval_prompts[:3], texts[:3])]}
    emit({"dataset": data.name, "base": a.base, "judge": judge_cfg,
          "judge_test_accuracy": round(judge_m["test"]["accuracy"], 4),
          "pairs": len(pairs), "pair_prompts": len(prompts), "pair_sampling_seconds": round(pair_seconds, 1),
          "tokens": a.tokens, "epochs": a.epochs, "lr": lr, "finetune": "lora r16", "drift_texts": len(real),
          **run_figures(runs),
          "eval_prompts": len(eval_prompts), **result,
          "drift_dpo": round(result["dpo"]["real_review_token_loss"] - result["base"]["real_review_token_loss"], 4),
          "total_seconds": round(time.perf_counter() - t_all, 1), "peak_rss_mb": peak_rss_mb()})


if __name__ == "__main__":
    main()
