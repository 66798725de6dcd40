"""Image classification benchmark on a folder with train/<class>/*.jpg and test/<class>/*.jpg (CIFAR-10 subset).

    python benchmarks/image_classification.py --data ../shared/data/cifar10-small

Trains luban's shipped example config (examples/cifar10_resnet.yaml, a small ResNet from scratch; validation is a
seeded 10% split of train), evaluates on test, and prints test_accuracy, baseline_accuracy, train_seconds (time in
training steps; fit_seconds adds the per-epoch validation passes), images_per_second (training) and peak_rss_mb as
the last line (one JSON object).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train/<class>/ and test/<class>/ images")
    ap.add_argument("--config", default=str(ROOT / "examples" / "cifar10_resnet.yaml"))
    ap.add_argument("--train-limit", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    a = ap.parse_args()

    data = Path(a.data)
    overrides = [f"data.train={data / 'train'}", f"data.test={data / 'test'}", "data.validation=null"]
    if a.train_limit:
        overrides.append(f"data.train_limit={a.train_limit}")
    run, m, total = train_run(a.config, overrides + a.set)
    n_train = m["data"]["splits"]["train"]
    emit({"dataset": data.name, "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "test_accuracy": round(m["test"]["accuracy"], 4),
          "test_f1_macro": round(m["test"]["f1_macro"], 4),
          "baseline_accuracy": round(m["baseline"]["test"]["accuracy"], 4) if m.get("baseline") else None,
          "images_per_second": round(n_train * m["epochs_run"] / max(m["timings"]["train_seconds"], 1e-9), 1),
          "epochs": m["epochs_run"], "best_epoch": m["best_epoch"],
          **run_figures(m, total)})


if __name__ == "__main__":
    main()
