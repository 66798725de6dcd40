"""LoRA supervised fine-tuning of real small LLMs, before vs after, entirely through `luban train`.

    python benchmarks/llm_sft.py --data ../shared/data \
        [--qwen ~/.cache/luban/models/qwen2.5-coder-0.5b-instruct] [--smollm2 starter-smollm2]

1. Qwen2.5-Coder-0.5B-Instruct (imported from its GGUF with `luban models import`) on two instruction tasks written
   as Alpaca rows (instruction / input / output): ChnSentiCorp hotel reviews → answer 正面 or 负面, and Tatoeba
   cmn-eng English → Chinese. One LoRA run (examples/llm_sft_qwen_zh.yaml) learns both.
2. SmolLM2-135M-Instruct (starter-smollm2) on SST-2 written as ShareGPT conversations → positive / negative
   (examples/llm_sft_smollm2_sst2.yaml).

"Before" is the same config with `model.finetune: none` (the model as imported, through the same chat template and
prompts); "after" is the LoRA run. Sentiment accuracy is constrained scoring: the label whose first token the model
gives the higher probability after the chat prompt (the choice greedy decoding restricted to the two labels makes;
the two labels differ in their first token — checked). BLEU is sacrebleu's corpus BLEU (tokenize zh) of greedy
translations (the reply's first line). The sizes are small because this runs on a shared 2-core CPU: see the
printed conditions. The from-scratch ChnSentiCorp figure (docs/benchmarks.md, a char n-gram model on 9,600
reviews) is printed beside the LLM's for scale.
"""

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FROM_SCRATCH_CHNSENTICORP = 0.943  # docs/benchmarks.md: examples/chnsenticorp.yaml (char n-gram NBSVM) on all 9,600 reviews

ZH_INSTRUCTION = "判断这条酒店评论的情感倾向，只回答“正面”或“负面”。"
ZH_LABELS = {"1": "正面", "0": "负面"}
MT_INSTRUCTION = "把下面的英文句子翻译成中文，只输出译文。"
EN_INSTRUCTION = "Is the sentiment of this movie review positive or negative? Answer with one word."
EN_LABELS = {"1": "positive", "0": "negative"}


def load_tsv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8-sig") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def balanced(rows: list[dict], n: int, rng: random.Random) -> list[dict]:
    by = {}
    for r in rows:
        by.setdefault(r["label"].strip(), []).append(r)
    out = []
    for label in sorted(by):
        rng.shuffle(by[label])
        out += by[label][: n // len(by)]
    rng.shuffle(out)
    return out


def user_turn(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}"  # how an Alpaca row's instruction + input becomes the user turn


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def qwen_data(data: Path, a, rng: random.Random, out: Path) -> dict:
    """Alpaca train/validation/test files mixing the two tasks, and the held-out evaluation sets."""
    senti = load_tsv(data / "chnsenticorp" / "train.tsv")
    senti = [{"label": r["label"].strip(), "text": r["text_a"].strip()[: a.max_chars]} for r in senti if r["text_a"]]
    pool = balanced(senti, a.zh_train + 2 * a.run_eval, rng)
    pairs = []
    with open(data / "cmn-eng" / "cmn.txt", encoding="utf-8-sig") as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and 12 <= len(parts[0]) <= 80:
                pairs.append((parts[0], parts[1]))
    rng.shuffle(pairs)
    test_pairs, mt_pool = pairs[: a.bleu_test], pairs[a.bleu_test:]
    test_en = {en for en, _ in test_pairs}
    mt_pool = [p for p in mt_pool if p[0] not in test_en][: a.mt_train + 2 * a.run_eval]

    def alpaca(rows, mts):
        out_rows = [{"instruction": ZH_INSTRUCTION, "input": r["text"], "output": ZH_LABELS[r["label"]]} for r in rows]
        out_rows += [{"instruction": MT_INSTRUCTION, "input": en, "output": zh} for en, zh in mts]
        rng.shuffle(out_rows)
        return out_rows

    e = a.run_eval // 2
    files = {
        "train": write_jsonl(out / "qwen_train.jsonl", alpaca(pool[: a.zh_train], mt_pool[: a.mt_train])),
        "validation": write_jsonl(out / "qwen_val.jsonl", alpaca(pool[a.zh_train: a.zh_train + e],
                                                                 mt_pool[a.mt_train: a.mt_train + e])),
        "test": write_jsonl(out / "qwen_test.jsonl", alpaca(pool[a.zh_train + e: a.zh_train + 2 * e],
                                                            mt_pool[a.mt_train + e: a.mt_train + 2 * e])),
    }
    test = load_tsv(data / "chnsenticorp" / "test.tsv")
    test = [{"label": r["label"].strip(), "text": r["text_a"].strip()[: a.max_chars]} for r in test if r["text_a"]]
    return {"files": files, "senti_test": balanced(test, a.test, rng), "mt_test": test_pairs}


def sst2_data(data: Path, a, rng: random.Random, out: Path) -> dict:
    """ShareGPT train/validation/test files, and the held-out SST-2 test rows (the GLUE dev set)."""
    train = [{"label": r["label"].strip(), "text": r["sentence"].strip()} for r in load_tsv(data / "sst2" / "train.tsv")
             if 20 <= len(r["sentence"].strip()) <= a.max_chars * 3]
    pool = balanced(train, a.sst2_train + 2 * a.run_eval, rng)

    def sharegpt(rows):
        return [{"conversations": [{"from": "human", "value": user_turn(EN_INSTRUCTION, r["text"])},
                                   {"from": "gpt", "value": EN_LABELS[r["label"]]}]} for r in rows]

    n, e = a.sst2_train, a.run_eval
    files = {"train": write_jsonl(out / "sst2_train.jsonl", sharegpt(pool[:n])),
             "validation": write_jsonl(out / "sst2_val.jsonl", sharegpt(pool[n: n + e])),
             "test": write_jsonl(out / "sst2_test.jsonl", sharegpt(pool[n + e: n + 2 * e]))}
    test = [{"label": r["label"].strip(), "text": r["sentence"].strip()} for r in load_tsv(data / "sst2" / "test.tsv")]
    return {"files": files, "test": balanced(test, a.test, rng)}


def label_accuracy(p, rows: list[dict], instruction: str, labels: dict, batch: int = 8) -> dict:
    """Constrained scoring: the label whose first token is likelier right after the chat prompt."""
    import torch

    p = p.task_predictor  # its model, tokenizer and chat formatter
    first = {k: p.encoder.encode_text(v)[0] for k, v in labels.items()}
    assert len(set(first.values())) == len(first), "the labels must differ in their first token"
    keys = sorted(first)
    correct, t0 = 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(rows), batch):
            chunk = rows[i: i + batch]
            ids = [p.formatter.chat_prompt([{"role": "user", "content": user_turn(instruction, r["text"])}])
                   for r in chunk]
            width = max(map(len, ids))
            x = torch.full((len(ids), width), p.encoder.pad_id or 0, dtype=torch.long)
            mask = torch.zeros_like(x)
            for j, s in enumerate(ids):
                x[j, : len(s)] = torch.as_tensor(s)
                mask[j, : len(s)] = 1
            logits = p.model(x, attention_mask=mask)
            last = logits[torch.arange(len(ids)), torch.as_tensor([len(s) - 1 for s in ids])]
            scores = last[:, [first[k] for k in keys]]
            pred = [keys[int(j)] for j in scores.argmax(-1)]
            correct += sum(pr == r["label"] for pr, r in zip(pred, chunk))
    return {"accuracy": round(correct / len(rows), 4), "rows": len(rows),
            "seconds": round(time.perf_counter() - t0, 1)}


def translation_bleu(p, pairs: list[tuple[str, str]], max_new_tokens: int) -> dict:
    import sacrebleu

    t0 = time.perf_counter()
    out = p.predict([{"messages": [{"role": "user", "content": user_turn(MT_INSTRUCTION, en)}]} for en, _ in pairs],
                    temperature=0, max_new_tokens=max_new_tokens)
    hyps = [(r["text"].strip().splitlines() or [""])[0].strip() for r in out]
    bleu = sacrebleu.corpus_bleu(hyps, [[zh for _, zh in pairs]], tokenize="zh")
    return {"bleu": round(bleu.score, 2), "rows": len(pairs), "seconds": round(time.perf_counter() - t0, 1),
            "examples": [{"en": en, "ref": zh, "hyp": h} for (en, zh), h in list(zip(pairs, hyps))[:3]]}


def total_train_tokens(p, train_file: Path) -> int:
    """Every token the training forward passes read (prompt, template and reply), via the run's own formatter."""
    from luban.data.chat_formats import to_canonical
    from luban.data.readers import read_table

    frame = to_canonical(read_table(train_file, "jsonl", True, None, "auto", "utf-8"),
                         "alpaca" if "qwen" in train_file.name else "sharegpt")
    return sum(len(p.task_predictor.formatter.encode_chat(m)[0]) for m in frame["messages"])


def run_pair(config: Path, model_path: str, files: dict, out: Path, name: str, a, evaluate) -> dict:
    """The model as imported (finetune none) and after LoRA, both through `luban train` with `config`, each scored
    by `evaluate(predictor)`."""
    import luban

    common = [f"model.path={model_path}", f"data.train={files['train']}", f"data.validation={files['validation']}",
              f"data.test={files['test']}", f"trainer.precision={a.precision}"] + list(a.set)
    before_run, _, _ = train_run(config, common + ["model.finetune=none", "evaluation.baseline=false"], out,
                                 f"{name}-before", quiet=True)
    before = evaluate(luban.load(before_run))
    print(f"[{name}] before: {json.dumps(before, ensure_ascii=False)}", flush=True)
    t0 = time.perf_counter()
    run, metrics, total = train_run(config, common + [f"trainer.epochs={a.epochs}"], out, name, quiet=a.quiet)
    minutes = (time.perf_counter() - t0) / 60
    p = luban.load(run)
    after = evaluate(p)
    print(f"[{name}] after: {json.dumps(after, ensure_ascii=False)}", flush=True)
    t = metrics["timings"]
    tokens = total_train_tokens(p, files["train"]) * metrics["epochs_run"]
    return {"before": before, "after": after, "run": str(run),
            "train_tokens_per_s": round(tokens / max(t["train_seconds"], 1e-9), 1),
            "run_tokens_per_s": t.get("tokens_per_second"),  # tokens read over the whole fit (its evaluations too)
            "train_tokens": tokens, "train_seconds": round(t["train_seconds"], 1),
            "run_minutes": round(minutes, 1), "epochs": metrics["epochs_run"],
            "precision": metrics["environment"]["precision"], "threads": metrics["environment"]["threads"],
            "trainable_parameters": metrics["parameters"]["trainable"],
            "total_parameters": metrics["parameters"]["total"],
            "test_loss_before_after": [metrics["baseline"]["test"]["loss"] if metrics.get("baseline") else None,
                                       metrics["test"]["loss"]]}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--qwen", default=str(Path.home() / ".cache" / "luban" / "models" / "qwen2.5-coder-0.5b-instruct"))
    ap.add_argument("--smollm2", default="starter-smollm2")
    ap.add_argument("--skip", choices=["qwen", "smollm2"], action="append", default=[])
    ap.add_argument("--zh-train", type=int, default=300, help="ChnSentiCorp training instructions")
    ap.add_argument("--mt-train", type=int, default=300, help="cmn-eng training pairs")
    ap.add_argument("--sst2-train", type=int, default=400)
    ap.add_argument("--test", type=int, default=200, help="held-out sentiment rows scored (each of zh / SST-2)")
    ap.add_argument("--bleu-test", type=int, default=100)
    ap.add_argument("--run-eval", type=int, default=32, help="rows in the runs' own validation and test files")
    ap.add_argument("--max-chars", type=int, default=64, help="reviews cut to this many characters")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for both models")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--out", help="keep the data files and runs here (default: a fresh temporary folder); the "
                                  "qwen-before run is the imported Qwen as a luban run (luban generate / serve)")
    a = ap.parse_args()

    data = Path(a.data)
    out = Path(a.out).resolve() if a.out else work_dir()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    result = {"conditions": {"load_before": uptime(), "cpus": os.cpu_count(), "zh_train": a.zh_train,
                             "mt_train": a.mt_train, "sst2_train": a.sst2_train, "test_rows": a.test,
                             "bleu_rows": a.bleu_test, "max_chars": a.max_chars, "epochs": a.epochs,
                             "scoring": "constrained: first-token probability of the two labels after the chat "
                                        "prompt; BLEU: greedy, first line, sacrebleu tokenize=zh"},
              "from_scratch_chnsenticorp": FROM_SCRATCH_CHNSENTICORP}
    t0 = time.perf_counter()
    if "qwen" not in a.skip:
        q = qwen_data(data, a, rng, out)

        def qwen_eval(p):
            return {"zh_sentiment": label_accuracy(p, q["senti_test"], ZH_INSTRUCTION, ZH_LABELS),
                    "en_zh": translation_bleu(p, q["mt_test"], 48)}

        result["qwen"] = run_pair(ROOT / "examples" / "llm_sft_qwen_zh.yaml", a.qwen, q["files"], out, "qwen", a,
                                  qwen_eval)
        result["qwen"]["load_after"] = uptime()
    if "smollm2" not in a.skip:
        s = sst2_data(data, a, rng, out)
        result["smollm2"] = run_pair(ROOT / "examples" / "llm_sft_smollm2_sst2.yaml", a.smollm2, s["files"], out,
                                     "smollm2", a,
                                     lambda p: {"sst2": label_accuracy(p, s["test"], EN_INSTRUCTION, EN_LABELS)})
        result["smollm2"]["load_after"] = uptime()
    qw, sm = result.get("qwen", {}), result.get("smollm2", {})

    def get(r, when, task, key):
        return r[when][task][key] if r else None

    result.update({
        "zh_sentiment_before": get(qw, "before", "zh_sentiment", "accuracy"),
        "zh_sentiment_after": get(qw, "after", "zh_sentiment", "accuracy"),
        "en_zh_bleu_before": get(qw, "before", "en_zh", "bleu"),
        "en_zh_bleu_after": get(qw, "after", "en_zh", "bleu"),
        "sst2_before": get(sm, "before", "sst2", "accuracy"),
        "sst2_after": get(sm, "after", "sst2", "accuracy"),
        "train_tokens_per_s": qw.get("train_tokens_per_s") or sm.get("train_tokens_per_s"),
        "smollm2_train_tokens_per_s": sm.get("train_tokens_per_s"),
        "minutes": round((time.perf_counter() - t0) / 60, 1), "peak_rss_mb": peak_rss_mb(),
        "load_end": uptime()})
    emit(result)


if __name__ == "__main__":
    main()
