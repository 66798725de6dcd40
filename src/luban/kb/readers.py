"""Documents → text units (source, page, text): .txt .md .html .htm .pdf .jsonl .csv .tsv, or a folder of them.

A unit is what character offsets refer to: a whole text/Markdown/HTML file, one PDF page (page = 1-based page
number) or one JSONL/CSV row (page = 1-based row number). Its text is cleaned (see `clean`) before chunking.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from luban.errors import DataError

SUFFIXES = (".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".jsonl", ".csv", ".tsv")


@dataclass(frozen=True)
class Unit:
    source: str
    page: int | None
    text: str


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u3000\xa0]+")
_BLANK = re.compile(r"\n{3,}")


def clean(text: str) -> str:
    """NFKC-free cleaning that keeps the characters readers see: unified newlines, no control or zero-width
    characters, runs of spaces (incl. full-width) as one, at most one blank line, stripped lines."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK.sub("\n\n", text).strip()


def expand(paths: list[str]) -> list[Path]:
    """Files named, and the supported files inside folders named (sorted); a missing path is an error."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not found:
                raise DataError(f"{p}: no documents ({', '.join(SUFFIXES)}) in this folder")
            out.extend(found)
        elif p.is_file():
            if p.suffix.lower() not in SUFFIXES:
                raise DataError(f"{p}: cannot read {p.suffix or 'files without an extension'}; luban kb reads "
                                f"{', '.join(SUFFIXES)}")
            out.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    return out


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    for enc in ("utf-8-sig", "gb18030"):
        try:
            return raw.decode(enc)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: not UTF-8 or GB18030 text")


def _html(path: Path) -> str:
    import lxml.html
    from lxml.etree import ParserError

    try:
        root = lxml.html.fromstring(_decode(path))
    except (ParserError, ValueError) as e:
        raise DataError(f"{path}: not readable HTML ({e})") from None
    for bad in root.xpath("//script|//style|//noscript|//template"):
        bad.drop_tree()
    for block in root.xpath("//p|//div|//br|//li|//tr|//h1|//h2|//h3|//h4|//h5|//h6|//title|//section|//article"):
        block.tail = "\n" + (block.tail or "")  # block elements end a line: sentences do not run together
    return root.text_content()


def _pdf(path: Path) -> list[Unit]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise DataError(f"{path}: the PDF is encrypted; decrypt it first")
        return [Unit(str(path), i + 1, page.extract_text() or "") for i, page in enumerate(reader.pages)]
    except DataError:
        raise
    except (PdfReadError, OSError, ValueError, KeyError, TypeError) as e:  # pypdf's errors on a damaged file
        raise DataError(f"{path}: unreadable PDF ({type(e).__name__}: {e})") from None


def _rows(path: Path, text_column: str) -> list[Unit]:
    units = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(_decode(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from None
            if not isinstance(row, dict) or text_column not in row:
                raise DataError(f"{path}:{n}: no {text_column!r} field (set the text column with --text-column)")
            units.append(Unit(str(path), n, str(row[text_column] or "")))
        return units
    import pandas as pd

    sep = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: not a readable table ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if text_column not in frame.columns:
        raise DataError(f"{path}: no column {text_column!r} (columns: {', '.join(map(str, frame.columns))}; set "
                        "the text column with --text-column)")
    return [Unit(str(path), i + 2, t) for i, t in enumerate(frame[text_column])]  # +2: the header is line 1


def read(path: Path, text_column: str = "text") -> list[Unit]:
    """The cleaned units of one file; a file with no text at all is an error naming it."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            units = _pdf(path)
        elif suffix in (".jsonl", ".csv", ".tsv"):
            units = _rows(path, text_column)
        elif suffix in (".html", ".htm"):
            units = [Unit(str(path), None, _html(path))]
        else:
            units = [Unit(str(path), None, _decode(path))]
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    units = [Unit(u.source, u.page, clean(unicodedata.normalize("NFC", u.text))) for u in units]
    units = [u for u in units if u.text]
    if not units:
        raise DataError(f"{path}: empty document (no text to index" + (
            "; a scanned PDF needs OCR first)" if suffix == ".pdf" else ")"))
    return units
