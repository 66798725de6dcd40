"""Speech recognition benchmark on the Free Spoken Digit Dataset (FSDD).

    python benchmarks/speech.py --data ../shared/data/fsdd

The conventional split: recordings 0-4 of each speaker/digit are the test set, the rest train. Two runs of the
shipped example config (examples/fsdd_digits_ctc.yaml, a CTC model from scratch):
- isolated digits: one recording per utterance, transcript = its digit -> digit_accuracy (exact transcript match);
- connected digits: 3-6 recordings of one speaker concatenated with 50-300 ms pauses (training utterances only from
  training recordings, test only from test recordings; 1,500 / 500 by default), transcript = the digit string ->
  cer (15 epochs).
`--compress` also exports the isolated-digit run to ONNX, quantizes it (int8 dynamic, bf16) and benchmarks each end
to end on the test recordings: size, latency, utterances/s, CER. Last line: one JSON object.
"""

import argparse
import csv
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import compressed_figures, emit, run_figures, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def split_recordings(folder: Path) -> dict[str, list[Path]]:
    out = {"train": [], "test": []}
    for p in sorted(folder.glob("*.wav")):
        _, _, index = p.stem.split("_")
        out["test" if int(index) < 5 else "train"].append(p)
    return out


def write_manifest(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["audio", "text"])
        w.writerows(rows)
    return path


def connected(files: list[Path], n: int, out_dir: Path, seed: int) -> list[tuple[str, str]]:
    """n utterances of 3-6 digits, each from one speaker's recordings in `files`, joined by short pauses."""
    import soundfile as sf

    rng = random.Random(seed)
    by_speaker: dict[str, list[Path]] = {}
    for p in files:
        by_speaker.setdefault(p.stem.split("_")[1], []).append(p)
    speakers = sorted(by_speaker)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(n):
        pool = by_speaker[rng.choice(speakers)]
        picks = [rng.choice(pool) for _ in range(rng.randint(3, 6))]
        parts = []
        for j, p in enumerate(picks):
            wave, rate = sf.read(str(p), dtype="float32")
            if j:
                parts.append(np.zeros(int(rate * rng.uniform(0.05, 0.3)), dtype=np.float32))
            parts.append(wave)
        path = out_dir / f"utt{k:05d}.wav"
        sf.write(str(path), np.concatenate(parts), rate)
        rows.append((str(path), "".join(p.stem.split("_")[0] for p in picks)))
    return rows


def train(config: str, work: Path, name: str, train_rows, test_rows, extra: list[str]):
    overrides = [f"data.train={write_manifest(work / f'{name}_train.csv', train_rows)}",
                 f"data.test={write_manifest(work / f'{name}_test.csv', test_rows)}",
                 "data.columns.audio=audio", "data.columns.text=text", "data.label_pattern=null"] + extra
    run, m, total = train_run(config, overrides, out=work / "runs", name=name)
    return run, m, total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="the fsdd folder (with recordings/)")
    ap.add_argument("--config", default=str(ROOT / "examples" / "fsdd_digits_ctc.yaml"))
    ap.add_argument("--connected-train", type=int, default=1500, help="connected-digit training utterances")
    ap.add_argument("--connected-test", type=int, default=500)
    ap.add_argument("--set", action="append", default=[], help="extra overrides for both runs")
    ap.add_argument("--connected-set", action="append", default=[], help="extra overrides for the connected run")
    ap.add_argument("--only", choices=["isolated", "connected"], help="run one of the two parts")
    ap.add_argument("--compress", action="store_true", help="also export the isolated-digit run to ONNX, quantize "
                    "it to int8 and bf16, and benchmark each on its test set (`compressed` in the JSON line)")
    a = ap.parse_args()

    folder = Path(a.data).resolve()
    rec = split_recordings(folder / "recordings" if (folder / "recordings").is_dir() else folder)
    work = work_dir()
    iso = {s: [(str(p), p.stem.split("_")[0]) for p in files] for s, files in rec.items()}
    result = {"dataset": "fsdd", "config": Path(a.config).name, "train_seconds": 0.0}
    if a.only != "connected":
        run_iso, m_iso, t_iso = train(a.config, work, "isolated", iso["train"], iso["test"], a.set)
        result.update(digit_accuracy=round(m_iso["test"]["exact_match"], 4),
                      isolated_cer=round(m_iso["test"]["cer"], 4), isolated=run_figures(m_iso, t_iso),
                      isolated_test_utterances=len(iso["test"]))
        result["train_seconds"] += m_iso["timings"]["train_seconds"]
        if a.compress:
            result["compressed"] = compressed_figures(run_iso, work / "isolated_test.csv", ("int8-dynamic", "bf16"))
    if a.only != "isolated":
        con_train = connected(rec["train"], a.connected_train, work / "connected_train", seed=0)
        con_test = connected(rec["test"], a.connected_test, work / "connected_test", seed=1)
        # each connected utterance holds ~4.5 digits: half the isolated run's epochs see more digits in total
        _, m_con, t_con = train(a.config, work, "connected", con_train, con_test,
                             ["trainer.epochs=15"] + a.set + a.connected_set)
        result.update(cer=round(m_con["test"]["cer"], 4),
                      connected_utterance_error=round(1 - m_con["test"]["exact_match"], 4),
                      connected=run_figures(m_con, t_con), connected_test_utterances=len(con_test))
        result["train_seconds"] += m_con["timings"]["train_seconds"]
    result["train_seconds"] = round(result["train_seconds"], 1)
    emit(result)


if __name__ == "__main__":
    main()
