"""Character-level language model benchmark on tiny-shakespeare (nanoGPT's CPU recipe as the anchor).

    python benchmarks/char_lm.py --data ../shared/data/tinyshakespeare/input.txt

Splits the text like nanoGPT's prepare.py (first 90% train, last 10% validation), trains the shipped example config
(examples/char_lm_shakespeare.yaml) and prints val_loss (every validation character scored once), train_seconds
(time in training steps), tokens_per_second (training) and generation speed as the last line (one JSON object).
`--export-hf` also exports the run as a Hugging Face GPT-2 (`luban export --format hf`) and generates 60 greedy
tokens (the window's length) from 8 prompts with transformers' `generate` on that folder and with luban: same text,
and each one's tokens/s.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="tiny-shakespeare input.txt")
    ap.add_argument("--config", default=str(ROOT / "examples" / "char_lm_shakespeare.yaml"))
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--export-hf", action="store_true", help="also export to HF GPT-2 and compare generation")
    a = ap.parse_args()

    text = Path(a.data).read_text(encoding="utf-8")
    work = work_dir()
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "val.txt").write_text(text[cut:], encoding="utf-8")
    overrides = [f"data.train={work / 'train.txt'}", f"data.validation={work / 'val.txt'}",
                 f"data.test={work / 'val.txt'}"] + ([f"seed={a.seed}"] if a.seed is not None else []) + a.set
    run, m, total = train_run(a.config, overrides, out=work / "runs")
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text(encoding="utf-8"))))
    tr = cfg["trainer"]
    steps = tr["epochs"] * tr["steps_per_epoch"]
    tokens = steps * tr["batch_size"] * cfg["model"]["block_size"]
    sample = m["test"].get("samples", [{}])[0]
    emit({"dataset": "tinyshakespeare", "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "val_loss": round(m["validation"]["loss"], 4), "val_perplexity": round(m["validation"]["perplexity"], 3),
          "bigram_baseline_val_loss": round(m["baseline"]["validation"]["loss"], 4) if m.get("baseline") else None,
          "steps": steps, "tokens_per_second": round(tokens / m["timings"]["train_seconds"]),
          "generation_tokens_per_second": m["test"].get("generation_tokens_per_s"),
          "sample": sample.get("prompt", "") + sample.get("text", ""), **run_figures(m, total),
          **({"hf_export": hf_generation(run, text[cut:])} if a.export_hf else {})})


def hf_generation(run: Path, val: str, prompts: int = 8, new_tokens: int = 60) -> dict:
    """Export to GPT-2 layout, then greedy continuations of validation snippets by transformers and by luban."""
    import time

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import luban
    from luban.compress.export import export_hf_run

    meta = export_hf_run(run, quiet=True)
    folder = run / "model" / "hf"
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    p = luban.load(run)
    starts = [val[i * 997: i * 997 + 4] for i in range(prompts)]
    t0 = time.perf_counter()
    ours = [p.generate_text(s, temperature=0, max_new_tokens=new_tokens)["text"] for s in starts]
    t_ours = time.perf_counter() - t0
    theirs = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in starts:
            ids = tok(s, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            theirs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    t_theirs = time.perf_counter() - t0
    return {"logits_max_abs_diff": meta["parity"]["max_abs_diff"],
            "tokenizer_ids_equal": meta["parity"]["tokenizer_ids_equal"],
            "same_text": sum(a == b for a, b in zip(ours, theirs)) / prompts,
            "luban_tokens_per_second": round(prompts * new_tokens / t_ours, 1),
            "transformers_tokens_per_second": round(prompts * new_tokens / t_theirs, 1)}


if __name__ == "__main__":
    main()
