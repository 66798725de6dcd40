"""English -> Chinese translation benchmark on the Tatoeba cmn-eng pairs (manythings.org cmn.txt).

    python benchmarks/translation.py --data ../shared/data/cmn-eng/cmn.txt

cmn.txt is a TSV without header: English<TAB>Chinese<TAB>attribution (the first line starts with a BOM). The
pairs are shuffled with a fixed seed; the last 1,000 are the test set and the 1,000 before them the validation set
(best checkpoint); the rest train. Trains luban's shipped example config (examples/translation_cmn_eng.yaml, a
Transformer from scratch: English BPE -> Chinese characters), decodes the test set with the config's beam search,
and prints bleu (sacrebleu, tokenize zh), chrf, train_seconds (time in training steps; fit_seconds adds the
per-epoch validation passes), decoding speed and peak_rss_mb as the last line (one JSON object).
"""

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run, work_dir  # noqa: E402
ROOT = Path(__file__).resolve().parent.parent


def split_pairs(path: Path, out: Path, seed: int, n_test: int, n_val: int) -> dict:
    lines = [ln for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    random.Random(seed).shuffle(lines)
    parts = {"test": lines[-n_test:], "validation": lines[-n_test - n_val:-n_test], "train": lines[:-n_test - n_val]}
    files = {}
    for name, rows in parts.items():
        files[name] = out / f"{name}.tsv"
        files[name].write_text("\n".join(rows) + "\n", encoding="utf-8")
    return files


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="cmn.txt (English<TAB>Chinese<TAB>attribution)")
    ap.add_argument("--config", default=str(ROOT / "examples" / "translation_cmn_eng.yaml"))
    ap.add_argument("--split-seed", type=int, default=0, help="seed of the shuffle that picks the test pairs")
    ap.add_argument("--test-size", type=int, default=1000)
    ap.add_argument("--validation-size", type=int, default=1000)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    out_dir = work_dir()
    files = split_pairs(Path(a.data), out_dir, a.split_seed, a.test_size, a.validation_size)
    overrides = [f"data.{k}={v}" for k, v in files.items()] + [
        "data.header=false", "data.columns.source=0", "data.columns.target=1"]
    run, m, total = train_run(a.config, overrides + a.set, out=out_dir / "runs")
    test = m["test"]
    emit({"dataset": "cmn-eng en->zh", "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "train_pairs": m["data"]["splits"]["train"], "test_pairs": m["data"]["splits"]["test"],
          "bleu": round(test["bleu"], 2), "chrf": round(test["chrf"], 2), "test_loss": round(test["loss"], 4),
          "validation_bleu": round(m["validation"]["bleu"], 2), "decoding": test["decoding"],
          "decode_seconds": test["decode_seconds"], "decode_tokens_per_second": test["tokens_per_second"],
          "epochs": m["epochs_run"], "best_epoch": m["best_epoch"], **run_figures(m, total)})


if __name__ == "__main__":
    main()
