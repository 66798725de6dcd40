"""PII redaction for Chinese and English text: phone numbers, e-mail addresses, resident ID numbers, bank cards, IP
addresses and URLs by validated patterns; person and place names through a named-entity model (a luban
token_classification run, e.g. one trained on People's Daily: examples/peoples_daily_ner.yaml).

    from luban.data.redact import redact_texts
    texts, counts = redact_texts(["张先生电话13812345678"], ["phone"])   # -> ["张先生电话[PHONE]"], {"phone": 1}

What each type finds (boundaries: never inside a longer run of digits or letters):

- phone: Chinese mobiles (1[3-9] + 9 digits, optional +86, optional separators 138-1234-5678), Chinese landlines
  written with an area code and a separator or brackets (010-12345678, (0755)1234567), North American numbers with
  separators ((555) 123-4567, 555-123-4567) and international numbers starting with + (+44 20 7946 0958).
- id_card: 18-character resident identity numbers whose birth date is a real date and whose ISO 7064 MOD 11-2
  check character is right (an 18-digit order number almost never is).
- bank_card: 16-19 digits (or groups of 4 separated by spaces or dashes) passing the Luhn check.
- email, url (http://, https://, www.), ip (IPv4, each part 0-255).
- person, address: the entities of type PER / LOC (and their People's Daily and OntoNotes names) that the
  NER run finds.

Replacement styles: "tag" writes [PHONE]; "pseudonym" writes [PHONE_1], [PHONE_2], ... the same value getting the
same pseudonym everywhere one Redactor sees it (a whole training set, one file, one server), so that who-said-what
structure survives without the values. Counts are by type; where (line numbers) is kept by the caller; the values
themselves are never recorded.
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Callable, Iterable

from luban.errors import ConfigError

TYPES = ("phone", "email", "id_card", "bank_card", "ip", "url", "person", "address")
NER_TYPES = ("person", "address")
STYLES = ("tag", "pseudonym")
# entity types of a NER run that count as a person / a place
NER_LABELS = {"person": {"PER", "PERSON", "NR", "PEOPLE"},
              "address": {"LOC", "GPE", "ADDR", "ADDRESS", "LOCATION", "NS", "FAC"}}

_D = r"(?<![0-9A-Za-z])"  # no digit or letter before
_E = r"(?![0-9A-Za-z])"  # ... or after
_PATTERNS = {
    "url": re.compile(r"(?:https?://|www\.)[^\s<>\"'，。；！？、）)】\]]+", re.I),
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w])"),
    "id_card": re.compile(_D + r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx]" + _E),
    "bank_card": re.compile(_D + r"(?:\d{4}[ -]){3}\d{4,7}" + _E + "|" + _D + r"\d{16,19}" + _E),
    "phone": re.compile("|".join([
        _D + r"(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}" + _E,  # Chinese mobile
        r"(?:(?<![0-9A-Za-z])0\d{2,3}[-－ ]|[(（]0\d{2,3}[)）] ?)[2-9]\d{6,7}(?:-\d{1,4})?" + _E,  # landline
        _D + r"(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}" + _E,  # North American
        r"(?<![\w+])\+(?:[2-9]\d{0,2})[ -]\d{1,4}(?:[ -]\d{2,4}){2,3}" + _E,  # international, with +
    ])),
    "ip": re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                     r"(?![\d]|\.\d)"),
}
_ORDER = ("url", "email", "id_card", "bank_card", "phone", "ip")  # earlier types win an overlap
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_card_valid(s: str) -> bool:
    """An 18-character resident ID: a real birth date and the right MOD 11-2 check character."""
    if len(s) != 18 or not s[:17].isdigit():
        return False
    try:
        date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    check = "10X98765432"[sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS)) % 11]
    return s[17].upper() == check


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _valid(kind: str, value: str) -> bool:
    if kind == "id_card":
        return id_card_valid(value)
    if kind == "bank_card":
        digits = re.sub(r"[ -]", "", value)
        return 16 <= len(digits) <= 19 and luhn_valid(digits)
    if kind == "url":
        return len(value) > len("www.") + 3
    return True


def check_types(types: Iterable[str], where: str = "--types") -> list[str]:
    """The PII types asked for, in TYPES order; an unknown one is a ConfigError naming `where`."""
    types = list(types)
    bad = [t for t in types if t not in TYPES]
    if bad:
        raise ConfigError(f"{where}: unknown PII type {bad[0]!r}; choose from {', '.join(TYPES)}")
    return [t for t in TYPES if t in types]


def ner_from_run(run: str | Path) -> Callable[[list[str]], list[list[dict]]]:
    """A NER function (texts -> each text's entities [{type, start, end}]) from a luban token_classification run."""
    from luban.predictor import load

    predictor = load(run, device="cpu")
    if predictor.task != "token_classification":
        raise ConfigError(f"data.clean.redact_ner: {run} is a {predictor.task} run; person and address names need a "
                          "token_classification run with entity tags (e.g. examples/peoples_daily_ner.yaml)")

    def ner(texts: list[str]) -> list[list[dict]]:
        out = [[] for _ in texts]
        todo = [i for i, t in enumerate(texts) if t.strip()]
        for start in range(0, len(todo), 256):
            part = todo[start:start + 256]
            for i, r in zip(part, predictor.predict([texts[j] for j in part])):
                out[i] = r.get("entities", [])
        return out

    return ner


class Redactor:
    """Finds and replaces the PII of `types` in texts; counts what it replaced, by type. `ner`: a luban
    token_classification run (path) or a function texts -> entities, needed for person / address."""

    def __init__(self, types: Iterable[str] = TYPES, style: str = "tag", ner=None, where: str = "--types"):
        self.types = check_types(types, where)
        if style not in STYLES:
            raise ConfigError(f"redaction style {style!r}: choose tag or pseudonym")
        self.style = style
        wants_ner = [t for t in self.types if t in NER_TYPES]
        if wants_ner and ner is None:
            raise ConfigError(f"{where}: {' and '.join(wants_ner)} need a named-entity model: a luban "
                              "token_classification run (data.clean.redact_ner / --ner RUN), e.g. one trained "
                              "with examples/peoples_daily_ner.yaml")
        self.ner = (ner_from_run(ner) if isinstance(ner, (str, Path)) else ner) if wants_ner else None
        self.counts: Counter = Counter()
        self._pseudonyms: dict[str, dict[str, str]] = {}

    def _spans(self, text: str, entities: list[dict]) -> list[tuple[int, int, str]]:
        found = []
        for kind in _ORDER:
            if kind in self.types:
                found += [(m.start(), m.end(), kind) for m in _PATTERNS[kind].finditer(text)
                          if _valid(kind, m.group())]
        for e in entities:
            for kind in NER_TYPES:
                if kind in self.types and str(e.get("type", "")).upper() in NER_LABELS[kind]:
                    found.append((int(e["start"]), int(e["end"]), kind))
        rank = {k: i for i, k in enumerate(_ORDER + NER_TYPES)}
        found.sort(key=lambda s: (rank[s[2]], s[0]))
        kept: list[tuple[int, int, str]] = []
        for s in found:  # by priority: a span overlapping one already kept is dropped
            if s[1] > s[0] and all(s[1] <= k[0] or s[0] >= k[1] for k in kept):
                kept.append(s)
        return sorted(kept)

    def _replacement(self, kind: str, value: str) -> str:
        tag = kind.upper()
        if self.style == "tag":
            return f"[{tag}]"
        seen = self._pseudonyms.setdefault(kind, {})
        if value not in seen:
            seen[value] = f"[{tag}_{len(seen) + 1}]"
        return seen[value]

    def redact_many(self, texts: list[str]) -> tuple[list[str], list[Counter]]:
        """The texts with their PII replaced, and per text the count of each type replaced."""
        texts = ["" if t is None else str(t) for t in texts]
        entities = self.ner(texts) if self.ner is not None else [[] for _ in texts]
        out, per_text = [], []
        for text, ents in zip(texts, entities):
            c: Counter = Counter()
            parts, pos = [], 0
            for a, b, kind in self._spans(text, ents):
                parts += [text[pos:a], self._replacement(kind, text[a:b])]
                pos = b
                c[kind] += 1
            parts.append(text[pos:])
            out.append("".join(parts))
            per_text.append(c)
            self.counts.update(c)
        return out, per_text

    def redact(self, text: str) -> str:
        return self.redact_many([text])[0][0]


def redact_texts(texts: list[str], types: Iterable[str] = ("phone", "email", "id_card", "bank_card", "ip", "url"),
                 style: str = "tag", ner=None) -> tuple[list[str], dict[str, int]]:
    """Redact a list of texts (e.g. documents before a knowledge base indexes them): the redacted texts and how many
    of each type were replaced. `ner`: a token_classification run folder for person / address."""
    r = Redactor(types, style, ner)
    out, _ = r.redact_many(list(texts))
    return out, dict(r.counts)


_FOR_CLEAN: dict = {}


def for_clean(clean) -> Redactor | None:
    """The Redactor data.clean asks for (redact, redact_style, redact_ner), or None: one per setting in a process,
    so that pseudonyms stay the same across a run's splits."""
    if not clean.redact:
        return None
    key = (tuple(clean.redact), clean.redact_style, clean.redact_ner)
    if key not in _FOR_CLEAN:
        _FOR_CLEAN[key] = Redactor(clean.redact, clean.redact_style, clean.redact_ner, where="data.clean.redact")
    return _FOR_CLEAN[key]


# ----------------------------------------------------------------------------------------------- files (luban redact)

_TABLES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def redact_file(src: str | Path, dst: str | Path, types: Iterable[str], columns: list[str] | None = None,
                style: str = "tag", ner=None, encoding: str = "utf-8") -> dict:
    """Redact a file into another: a CSV / TSV / JSON Lines file's text columns (`columns`, default every column
    holding text), or any other file line by line. Returns {"rows", "counts": {type: n}, "columns": {column:
    {type: n}}}; `dst` is written whole or not at all."""
    import csv
    import json
    import os

    from luban.errors import DataError

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise DataError(f"--input: {src}: file not found")
    if src.resolve() == dst.resolve():
        raise DataError(f"--output: {dst} is the input file; write the redacted copy elsewhere")
    red = Redactor(types, style, ner)
    kind = _TABLES.get(src.suffix.lower(), "text")
    by_column: dict[str, Counter] = {}
    try:
        text = src.read_text(encoding=encoding)
    except UnicodeDecodeError as e:
        raise DataError(f"--input: {src}: not {encoding} text ({e.reason})") from None
    if kind == "text":
        if columns:
            raise DataError(f"--columns: {src} is plain text (one text per line); columns are for .csv, .tsv and "
                            ".jsonl files")
        lines = text.split("\n")
        out, _ = red.redact_many(lines)
        body, rows, by_column["text"] = "\n".join(out), len(lines), Counter(red.counts)
    elif kind == "jsonl":
        records = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"--input: {src}: line {i}: not JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise DataError(f"--input: {src}: line {i}: expected a JSON object")
                records.append(rec)
        names = list(dict.fromkeys(k for r in records for k in r))
        cols = _pick_columns(columns, names, [k for k in names if any(isinstance(r.get(k), str) for r in records)],
                             src)
        for col in cols:
            idx = [i for i, r in enumerate(records) if isinstance(r.get(col), str)]
            before = Counter(red.counts)
            new, _ = red.redact_many([records[i][col] for i in idx])
            for i, v in zip(idx, new):
                records[i][col] = v
            by_column[col] = red.counts - before
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        rows = len(records)
    else:
        delim = "\t" if kind == "tsv" else ","
        quoting = csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL
        table = list(csv.reader(text.splitlines(), delimiter=delim, quoting=quoting))
        if not table:
            raise DataError(f"--input: {src}: empty file")
        header, data = table[0], table[1:]
        numeric = lambda v: v.strip().replace(".", "", 1).lstrip("-").isdigit()  # noqa: E731
        texty = [h for j, h in enumerate(header) if any(j < len(r) and r[j] and not numeric(r[j]) for r in data)]
        cols = _pick_columns(columns, header, texty, src)
        for col in cols:
            j = header.index(col)
            idx = [i for i, r in enumerate(data) if j < len(r)]
            before = Counter(red.counts)
            new, _ = red.redact_many([data[i][j] for i in idx])
            for i, v in zip(idx, new):
                data[i][j] = v
            by_column[col] = red.counts - before
        import io

        buf = io.StringIO()
        w = csv.writer(buf, delimiter=delim, quoting=quoting, lineterminator="\n",
                       **({"escapechar": "\\"} if kind == "tsv" else {}))
        w.writerows([header] + data)
        body, rows = buf.getvalue(), len(data)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    tmp.write_text(body, encoding=encoding)
    os.replace(tmp, dst)
    return {"rows": rows, "counts": {t: red.counts.get(t, 0) for t in red.types},
            "columns": {c: dict(v) for c, v in by_column.items()}}


def _pick_columns(asked: list[str] | None, names: list[str], default: list[str], src: Path) -> list[str]:
    from luban.errors import DataError

    if not asked:
        return default
    for c in asked:
        if c not in names:
            raise DataError(f"--columns: column {c!r} not found in {src}; its columns are: {', '.join(names)}")
    return list(asked)
