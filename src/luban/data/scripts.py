"""Which units a language's text is made of: words between spaces (English, Russian, ...) or characters (Chinese,
Japanese, Thai, ...). The classical text baseline and the n-gram model's `analyzer: auto` decide the same way."""

from __future__ import annotations


def unspaced(ch: str) -> bool:
    """A character of a script written without spaces between words (Han, kana, Thai, Lao, Khmer, Myanmar)."""
    o = ord(ch)
    return (0x3040 <= o <= 0x30FF or 0x3400 <= o <= 0x4DBF or 0x4E00 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF
            or 0x20000 <= o <= 0x2FA1F or 0x0E00 <= o <= 0x0EFF or 0x1000 <= o <= 0x109F or 0x1780 <= o <= 0x17FF)


def text_analyzer(texts, sample: int = 2000) -> str:
    """"word" when the training texts are in a language written with spaces between words (most letters of a
    sample outside the unspaced scripts), else "char" (Chinese, Japanese, Thai, ...: characters are the units)."""
    letters = n_unspaced = 0
    texts = list(texts)
    step = max(1, len(texts) // sample)
    for t in texts[::step][:sample]:
        for ch in str(t):
            if ch.isalpha():
                letters += 1
                n_unspaced += unspaced(ch)
    return "char" if letters and n_unspaced / letters >= 0.3 else "word"
