"""The trust verbs of the CLI: `luban redact` (PII out of a file) and `luban explain` (why a run predicted what it
did). `luban.cli.build_parser` adds them with `add_parsers(sub)`."""

from __future__ import annotations

import json

DEFAULT_TYPES = "phone,email,id_card,bank_card,ip,url"


def _types(value: str) -> list[str]:
    from luban.data.redact import check_types

    return check_types([t.strip() for t in value.split(",") if t.strip()], "--types")


def _cmd_redact(a):
    from luban.data.redact import redact_file

    cols = [c.strip() for c in a.columns.split(",") if c.strip()] if a.columns else None
    res = redact_file(a.input, a.output, _types(a.types), cols, a.style, a.ner, a.encoding)
    total = sum(res["counts"].values())
    print(f"{a.input} -> {a.output}: {res['rows']} rows, {total} replaced")
    width = max(map(len, res["counts"]))
    for t, n in res["counts"].items():
        where = ", ".join(f"{c} {v[t]}" for c, v in res["columns"].items() if v.get(t))
        print(f"  {t:<{width}}  {n}" + (f"  ({where})" if where and len(res["columns"]) > 1 else ""))
    if a.json:
        print(json.dumps(res, ensure_ascii=False))


def add_parsers(sub) -> None:
    r = sub.add_parser("redact", help="replace PII (phones, e-mails, IDs, bank cards, IPs, URLs; names with a NER "
                                      "run) in a text, CSV, TSV or JSON Lines file; prints counts per type")
    r.add_argument("--input", required=True, help="a .csv / .tsv / .jsonl table, or any text file (line by line)")
    r.add_argument("--output", required=True, help="the redacted copy (written whole or not at all)")
    r.add_argument("--types", default=DEFAULT_TYPES,
                   help=f"comma-separated PII types (default {DEFAULT_TYPES}; also person, address with --ner)")
    r.add_argument("--columns", help="comma-separated columns of a table to redact (default: every text column)")
    r.add_argument("--style", choices=["tag", "pseudonym"], default="tag",
                   help="tag: [PHONE]; pseudonym: [PHONE_1], [PHONE_2], ... the same value the same pseudonym")
    r.add_argument("--ner", metavar="RUN", help="a luban token_classification run whose PER / LOC entities are "
                   "redacted as person / address")
    r.add_argument("--encoding", default="utf-8")
    r.add_argument("--json", action="store_true", help="also print the counts as one JSON line")
    r.set_defaults(fn=_cmd_redact)
