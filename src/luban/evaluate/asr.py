"""Speech recognition metrics with jiwer: word and character error rates, corpus-level and per utterance."""

from __future__ import annotations


def _jiwer():
    try:
        import jiwer
    except ImportError:
        from luban.errors import ConfigError

        raise ConfigError("speech metrics need jiwer: pip install 'luban[audio]'") from None
    return jiwer



def asr_metrics(references: list[str], hypotheses: list[str]) -> dict:
    """Corpus WER and CER (edit operations summed over utterances / reference length), exact-match rate.
    Empty references are skipped by jiwer's definition (WER undefined); an empty hypothesis counts deletions."""
    jiwer = _jiwer()
    pairs = [(r, h) for r, h in zip(references, hypotheses, strict=True) if r.strip()]
    if not pairs:
        return {"wer": 0.0, "cer": 0.0, "exact_match": 0.0}
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters([r.replace(" ", "") for r in refs], [h.replace(" ", "") for h in hyps])
    exact = sum(r.split() == h.split() for r, h in pairs) / len(pairs)
    return {"wer": float(words.wer), "cer": float(chars.cer), "exact_match": float(exact)}


def utterance_errors(reference: str, hypothesis: str) -> dict:
    jiwer = _jiwer()
    if not reference.strip():
        return {"wer": float(bool(hypothesis.strip())), "cer": float(bool(hypothesis.strip()))}
    return {"wer": float(jiwer.wer(reference, hypothesis or "")),
            "cer": float(jiwer.cer(reference.replace(" ", ""), (hypothesis or "").replace(" ", "")))}
