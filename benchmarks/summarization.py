"""Chinese summarization benchmark: CSL abstracts -> paper titles (1,000 dev + 1,000 test pairs).

    python benchmarks/summarization.py --data ../shared/data/csl-summ

The folder holds dev.tsv and test.tsv without header: "to title"<TAB>abstract<TAB>title. Trains luban's shipped
example config (examples/summarization_csl.yaml: a character-level Transformer from scratch with a shared
vocabulary and a copy head) on dev.tsv, holding a seeded 10% of it out for validation (best checkpoint), decodes
test.tsv with the config's beam search, and prints rouge_1/rouge_2/rouge_l (F1, characters for Chinese) beside the
lead-N baseline (the abstract's first sentence) and train_seconds as the last line (one JSON object).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run  # noqa: E402
ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with dev.tsv and test.tsv (tag<TAB>abstract<TAB>title)")
    ap.add_argument("--config", default=str(ROOT / "examples" / "summarization_csl.yaml"))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    data = Path(a.data)
    overrides = [f"data.train={data / 'dev.tsv'}", f"data.test={data / 'test.tsv'}", "data.validation=null",
                 "data.header=false", "data.columns.source=1", "data.columns.target=2"]
    run, m, total = train_run(a.config, overrides + a.set)
    test, lead = m["test"], m["baseline"]["test"] if m.get("baseline") else {}
    emit({"dataset": "csl-summ abstract->title", "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "train_pairs": m["data"]["splits"]["train"], "test_pairs": m["data"]["splits"]["test"],
          **{k: round(test[k], 4) for k in ("rouge_1", "rouge_2", "rouge_l")},
          **{f"lead_baseline_{k}": round(v, 4) for k, v in lead.items()},
          "validation_rouge_l": round(m["validation"]["rouge_l"], 4), "decoding": test["decoding"],
          "mean_output_tokens": test["mean_output_tokens"], "decode_seconds": test["decode_seconds"],
          "epochs": m["epochs_run"], "best_epoch": m["best_epoch"], **run_figures(m, total)})


if __name__ == "__main__":
    main()
