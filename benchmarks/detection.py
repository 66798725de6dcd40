"""Object detection benchmark on the raccoon dataset (Dat Tran's 200 images, one class).

    python benchmarks/detection.py --data ../shared/data/raccoon

Trains luban's shipped example config (examples/raccoon_centernet.yaml: a CenterNet-style detector from scratch)
on data/train_labels.csv (10% of its images held out for validation), evaluates on data/test_labels.csv, and prints
map50, map (mAP@[.5:.95]), map75, train_seconds (time in training steps; fit_seconds adds the per-epoch validation
passes) and peak_rss_mb as the last line (one JSON object). `--compress` also exports the run to ONNX, quantizes it
(int8 static and dynamic, bf16) and benchmarks each end to end on the test images: size, latency, images/s, mAP.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import compressed_figures, emit, run_figures, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="raccoon folder with data/train_labels.csv, data/test_labels.csv "
                    "and images/")
    ap.add_argument("--config", default=str(ROOT / "examples" / "raccoon_centernet.yaml"))
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--compress", action="store_true", help="also export the run to ONNX, quantize it (int8 static "
                    "and dynamic, bf16) and benchmark each on the test images (`compressed` in the JSON line)")
    a = ap.parse_args()

    data = Path(a.data).resolve()
    test = data / "data" / "test_labels.csv"
    overrides = [f"data.train={data / 'data' / 'train_labels.csv'}", f"data.test={test}",
                 f"data.image_root={data / 'images'}"]
    run, m, total = train_run(a.config, overrides + a.set)
    emit({"dataset": data.name, "config": Path(a.config).name, "parameters": m["parameters"]["total"],
          "test_images": m["data"]["splits"]["test"], "map50": round(m["test"]["map50"], 4),
          "map": round(m["test"]["map"], 4), "map75": round(m["test"]["map75"], 4),
          "best_epoch": m["best_epoch"], "epochs_run": m["epochs_run"],
          **run_figures(m, total),
          **({"compressed": compressed_figures(run, test,
                                               ("int8-static", "int8-dynamic", "bf16"))} if a.compress else {})})


if __name__ == "__main__":
    main()
