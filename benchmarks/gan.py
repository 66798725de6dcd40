"""Image generation benchmark: luban's class-conditional DCGAN on the built-in 8x8 digits (no --data needed).

    python benchmarks/gan.py
    python benchmarks/gan.py --set trainer.epochs=40 --threads 1

Trains examples/digits_gan.yaml, then scores 1,000 samples (balanced over the 10 digits) with the quality
classifier trained on the real training images. Prints mean_confidence, class_entropy_ratio, kid (test),
the classifier's own test accuracy, train_seconds (time in GAN steps; fit_seconds adds classifier training and the
per-epoch scoring) and peak_rss_mb as the last line (one JSON object).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "examples" / "digits_gan.yaml"))
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: the config's)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    overrides = [f"trainer.num_threads={a.threads}"] if a.threads else []
    run, m, total = train_run(a.config, overrides + a.set)
    t = m["test"]
    emit({"dataset": "digits", "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "mean_confidence": round(t["mean_confidence"], 4),
          "class_entropy_ratio": round(t["class_entropy_ratio"], 4), "kid": round(t["kid"], 4),
          "real_vs_real_kid": round(t["real_vs_real_kid"], 4),
          "classifier_accuracy": round(t["classifier_accuracy"], 4), "samples": t["samples"],
          "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
          **run_figures(m, total)})


if __name__ == "__main__":
    main()
