"""Row-aligned, streamed `luban predict` on big files (offline, synthetic data):

    python benchmarks/predict_rows.py [--text-run RUN] [--rows 20000] [--big-rows 200000]

(a) For text, tabular and image inputs: a --rows file with unusable rows planted (whitespace-only "\\u3000\\u3000",
    empty and NUL texts; blank and non-numeric cells; empty and missing image paths) goes through the CLI; the
    output must hold exactly one row per input row, with the input's ids in order and an error row for each
    planted bad row. Tiny runs are trained here (a text run can be passed with --text-run: its text column is used).
(b) Peak RSS of `luban predict` (its own process, from wait4) on --big-rows vs --rows text rows: streaming keeps
    memory flat in the input size.

The last line is one JSON object.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import tabular_config, text_config, write_csv, zh_sentences  # noqa: E402

BAD_TEXTS = ["\u3000\u3000", "", "\x00", "   "]


def luban_predict(run: Path, args: list[str]) -> tuple[float, float, str]:
    """Run `luban predict RUN ARGS` in its own process: (wall seconds, peak RSS MB of that process, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "luban", "predict", str(run), *args], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"luban predict failed ({p.returncode}): {err}")
    return time.perf_counter() - t0, round(usage.ru_maxrss / 1024, 1), err


def check(out: Path, ids: list[str], bad: set[int], key: str = "id") -> dict:
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    errors = [i for i, r in enumerate(rows) if "error" in r]
    return {"rows_in": len(ids), "rows_out": len(rows), "ids_match": [r[key] for r in rows] == ids,
            "error_rows": len(errors), "errors_where_planted": set(errors) == bad}


def text_file(path: Path, n: int, seed: int = 0) -> tuple[list[str], set[int]]:
    base = [t for t, _ in zh_sentences(300, seed=seed)]
    ids, bad = [], set()
    with open(path, "w", encoding="utf-8") as f:
        f.write("id\ttext\n")
        for i in range(n):
            t = base[i % len(base)]
            if i % 997 == 13:
                t = BAD_TEXTS[(i // 997) % len(BAD_TEXTS)]
                bad.add(i)
            ids.append(f"r{i}")
            f.write(f"r{i}\t{t}\n")
    return ids, bad


def tabular_run(root: Path) -> Path:
    import luban

    rows = [[str(a), str(b), "big" if a + b > 10 else "small"] for a in range(11) for b in range(11)]
    train = write_csv(root / "tab.csv", rows, header=("a", "b", "size"))
    return luban.train(tabular_config(root / "runs", "tab", "tabular_classification",
                                      {"train": str(train), "columns": {"label": "size"}},
                                      trainer={"epochs": 5}), quiet=True)


def tabular_file(path: Path, n: int) -> tuple[list[str], set[int]]:
    ids, bad = [], set()
    with open(path, "w", encoding="utf-8") as f:
        f.write("key,a,b\n")
        for i in range(n):
            a, b = str(i % 11), str((i * 7) % 11)
            if i % 1009 == 5:
                a = "\u3000\u3000"  # a blank cell: imputed, still predicted
            if i % 1013 == 7:
                b = "abc"  # not a number: an error row
                bad.add(i)
            ids.append(f"k{i}")
            f.write(f"k{i},{a},{b}\n")
    return ids, bad


def image_run(root: Path) -> tuple[Path, list[Path]]:
    import numpy as np
    from PIL import Image

    import luban

    rng = np.random.default_rng(0)
    files = []
    for kind in ("horizontal", "vertical"):
        (root / "imgs" / kind).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            f = root / "imgs" / kind / f"{i}.png"
            Image.fromarray((rng.random((8, 8, 3)) * 255).astype("uint8")).save(f)
            files.append(f)
    cfg = {"task": "image_classification", "seed": 5, "data": {"train": str(root / "imgs")},
           "preprocessing": {"image": {"size": 8, "resize": 8, "augment": {"hflip": False}}},
           "model": {"type": "resnet", "widths": [4], "blocks": [1]},
           "trainer": {"epochs": 1, "batch_size": 8, "num_threads": 1, "device": "cpu"},
           "evaluation": {"baseline": False}, "output": {"dir": str(root / "runs"), "name": "img", "tensorboard": False}}
    return luban.train(cfg, quiet=True), files


def image_file(path: Path, n: int, files: list[Path]) -> tuple[list[str], set[int]]:
    ids, bad = [], set()
    with open(path, "w", encoding="utf-8") as f:
        f.write("id,image\n")
        for i in range(n):
            p = str(files[i % len(files)])
            if i % 1999 == 3:
                p = "" if (i // 1999) % 2 else "missing.png"
                bad.add(i)
            ids.append(f"i{i}")
            f.write(f"i{i},{p}\n")
    return ids, bad


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--text-run", default=None, help="a trained text_classification run (default: train one)")
    ap.add_argument("--rows", type=int, default=20_000)
    ap.add_argument("--big-rows", type=int, default=200_000)
    a = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import luban

    root = work_dir()
    if a.text_run:
        run = Path(a.text_run)
    else:
        train = write_csv(root / "train.csv", zh_sentences(130, seed=11)[:200])
        run = luban.train(text_config(root / "runs", "zh", train), quiet=True)
    out: dict = {}

    # (a) exactly one output row per input row, ids in order, for text, tabular and image inputs
    f = root / "text.tsv"
    ids, bad = text_file(f, a.rows)
    secs, rss_small, _ = luban_predict(run, ["--input", str(f), "--output", str(root / "text.jsonl"),
                                             "--id-column", "id"])
    out["text"] = check(root / "text.jsonl", ids, bad) | {"seconds": round(secs, 1)}
    tab = tabular_run(root)
    f = root / "tab_in.csv"
    ids, bad = tabular_file(f, a.rows)
    secs, _, _ = luban_predict(tab, ["--input", str(f), "--output", str(root / "tab.jsonl"), "--id-column", "key"])
    out["tabular"] = check(root / "tab.jsonl", ids, bad, key="key") | {"seconds": round(secs, 1)}
    img, files = image_run(root)
    f = root / "img_in.csv"
    ids, bad = image_file(f, a.rows, files)
    secs, _, _ = luban_predict(img, ["--input", str(f), "--output", str(root / "img.jsonl"), "--id-column", "id"])
    out["image"] = check(root / "img.jsonl", ids, bad) | {"seconds": round(secs, 1)}
    for kind in ("text", "tabular", "image"):
        r = out[kind]
        print(f"{kind}: {r['rows_in']} rows in -> {r['rows_out']} out, ids match {r['ids_match']}, "
              f"{r['error_rows']} error rows (where planted: {r['errors_where_planted']})  {r['seconds']}s")

    # (b) memory flat in the input size: peak RSS on big vs small text files
    f = root / "big.tsv"
    big_ids, big_bad = text_file(f, a.big_rows)
    secs, rss_big, _ = luban_predict(run, ["--input", str(f), "--output", str(root / "big.jsonl"),
                                           "--id-column", "id"])
    big = check(root / "big.jsonl", big_ids, big_bad)
    print(f"peak RSS: {rss_small} MB on {a.rows} rows, {rss_big} MB on {a.big_rows} rows "
          f"({os.path.getsize(f) / 2**20:.1f} MB file, {secs:.1f}s)")
    ok = all(out[k]["rows_out"] == out[k]["rows_in"] and out[k]["ids_match"] and out[k]["errors_where_planted"]
             for k in ("text", "tabular", "image")) and big["rows_out"] == a.big_rows and big["ids_match"]
    emit({"rows": a.rows, "big_rows": a.big_rows, "all_rows_aligned": ok,
          **{f"{k}_{m}": v for k in ("text", "tabular", "image") for m, v in out[k].items()},
          "big_rows_out": big["rows_out"], "big_ids_match": big["ids_match"],
          "peak_rss_mb_small": rss_small, "peak_rss_mb_big": rss_big,
          "rss_ratio_big_over_small": round(rss_big / rss_small, 3), "big_input_mb": round(os.path.getsize(f) / 2**20, 1),
          "big_seconds": round(secs, 1), "big_rows_per_second": round(a.big_rows / secs)})


if __name__ == "__main__":
    main()
