"""Text classification benchmark on a folder of train/dev/test TSVs (ChnSentiCorp, SST-2 layouts).

    python benchmarks/text_classification.py --data ../shared/data/chnsenticorp
    python benchmarks/text_classification.py --data ../shared/data/sst2 --train-limit 10000 --backbone starter-minilm

Trains luban's shipped example config (examples/chnsenticorp.yaml from scratch, or examples/sst2_minilm.yaml with a
pretrained backbone), evaluates on test, and prints test_accuracy, baseline_accuracy, train_seconds (time in training
steps; fit_seconds adds the per-epoch validation passes) and peak_rss_mb as the last line (one JSON object).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run, tsv_folder_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.tsv, dev.tsv, test.tsv")
    ap.add_argument("--backbone", default=None, help="pretrained backbone (e.g. starter-minilm or a folder)")
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--config", default=None, help="config to run (default: the shipped example for the mode)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    data = Path(a.data)
    config = a.config or str(ROOT / "examples" / ("sst2_minilm.yaml" if a.backbone else "chnsenticorp.yaml"))
    overrides = tsv_folder_overrides(data)
    if a.backbone:
        overrides.append(f"model.path={a.backbone}")
    if a.train_limit:
        overrides.append(f"data.train_limit={a.train_limit}")
    run, m, total = train_run(config, overrides + a.set)
    emit({"dataset": data.name, "config": Path(config).name, "parameters": m["parameters"]["total"],
          "test_accuracy": round(m["test"]["accuracy"], 4),
          "test_f1_macro": round(m["test"]["f1_macro"], 4),
          "baseline_accuracy": round(m["baseline"]["test"]["accuracy"], 4) if m.get("baseline") else None,
          **run_figures(m, total)})


if __name__ == "__main__":
    main()
