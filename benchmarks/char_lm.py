"""Character-level language model benchmark on tiny-shakespeare (nanoGPT's CPU recipe as the anchor).

    python benchmarks/char_lm.py --data ../shared/data/tinyshakespeare/input.txt

Splits the text like nanoGPT's prepare.py (first 90% train, last 10% validation), trains the shipped example config
(examples/char_lm_shakespeare.yaml) and prints val_loss (every validation character scored once), train_seconds
(time in training steps), tokens_per_second (training) and generation speed as the last line (one JSON object).
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
          "sample": sample.get("prompt", "") + sample.get("text", ""), **run_figures(m, total)})


if __name__ == "__main__":
    main()
