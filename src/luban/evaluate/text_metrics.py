"""Metrics for generated text, computed by well-kept libraries: BLEU and chrF with sacrebleu, ROUGE-1/2/L with
rouge-score; and the lead-N summarization baseline.

Scales follow the libraries: BLEU and chrF are 0-100 (sacrebleu), ROUGE F1 is 0-1 (rouge-score).

Chinese needs care in both:

- BLEU: sacrebleu's default `13a` tokenizer leaves a run of Chinese characters as one "word"; its `zh` tokenizer
  splits every CJK character apart. `tokenize="auto"` picks `zh` when the references contain CJK characters.
- ROUGE: rouge-score's default tokenizer keeps only `[a-z0-9]` and silently DROPS every CJK character (a Chinese
  summary scores 0 against itself). `CJKAwareTokenizer` makes CJK characters one token each and keeps Latin
  words (lowercased, punctuation dropped) exactly as the default tokenizer would, without stemming.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Han ideographs (with extension A and compatibility), kana, Hangul syllables: scored one character at a time
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
_CJK_CHAR = re.compile(f"([{CJK}])")
_HAN = re.compile("[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[^\W_]+")


def has_cjk(texts: Sequence[str]) -> bool:
    return any(_HAN.search(t) for t in texts)


def bleu_tokenizer(references: Sequence[str], tokenize: str = "auto") -> str:
    """sacrebleu tokenizer name: `zh` when the references contain Chinese characters, else `13a`."""
    if tokenize != "auto":
        return tokenize
    return "zh" if has_cjk(references) else "13a"


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "auto") -> float:
    """Corpus BLEU (0-100) of one hypothesis per reference, sacrebleu defaults (exp smoothing, 4-grams)."""
    import sacrebleu

    _check(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)],
                                       tokenize=bleu_tokenizer(references, tokenize)).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF (0-100): character 6-grams, beta 2, whitespace ignored (sacrebleu defaults)."""
    import sacrebleu

    _check(hypotheses, references)
    if not hypotheses:
        return 0.0
    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def sentence_chrf(hypothesis: str, reference: str) -> float:
    import sacrebleu

    return float(sacrebleu.sentence_chrf(hypothesis, [reference]).score)


class CJKAwareTokenizer:
    """rouge-score tokenizer: every CJK character is a token; other text splits into lowercased words of letters
    and digits (punctuation dropped), as rouge-score's default does for English."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(_CJK_CHAR.sub(r" \1 ", text.lower()))


_SCORER = None


def _scorer():
    global _SCORER
    if _SCORER is None:
        from rouge_score import rouge_scorer

        _SCORER = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=CJKAwareTokenizer())
    return _SCORER


def rouge_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> list[dict[str, float]]:
    """Per-pair ROUGE-1/2/L F1 (0-1)."""
    _check(hypotheses, references)
    scorer = _scorer()
    out = []
    for h, r in zip(hypotheses, references):
        s = scorer.score(r, h)  # rouge-score takes (target, prediction)
        out.append({"rouge_1": s["rouge1"].fmeasure, "rouge_2": s["rouge2"].fmeasure,
                    "rouge_l": s["rougeL"].fmeasure})
    return out


def rouge(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 averaged over pairs (0-1), with the CJK-aware tokenizer."""
    pairs = rouge_pairs(hypotheses, references)
    if not pairs:
        return {"rouge_1": 0.0, "rouge_2": 0.0, "rouge_l": 0.0}
    return {k: sum(p[k] for p in pairs) / len(pairs) for k in ("rouge_1", "rouge_2", "rouge_l")}


# sentence ends: 。！？!? always; "." unless a digit follows (3.5 stays whole); a closing quote or bracket right
# after the terminator stays with its sentence; newlines always end a sentence
_SENTENCE_END = re.compile(r"(?:[。！？!?]|\.(?!\d))[”’」』）)]*|\n+")


def split_sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        piece = text[start:m.end()].strip()
        if piece:
            out.append(piece)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return out


def lead_n(text: str, n: int = 1) -> str:
    """The first n sentences of text, as they appear in it (the lead-N summarization baseline)."""
    count, start = 0, 0
    for m in _SENTENCE_END.finditer(text):
        if text[start:m.end()].strip():
            count += 1
        start = m.end()
        if count == n:
            return text[:start].strip()
    return text.strip()
