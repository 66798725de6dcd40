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


def _cmd_explain(a):
    from pathlib import Path

    from luban.errors import LubanError
    from luban.predictor import load

    p = load(a.run, device=a.device, backend="torch")
    kind = p.capabilities()["inputs"]
    if a.text:
        inputs = list(a.text)
    elif a.image:
        inputs = [str(Path(x)) for x in a.image]
    elif a.input:
        inputs = p.read_inputs(a.input)[: a.limit]
    else:
        raise LubanError("give --text, --image or --input")
    if a.text and kind != "text" or a.image and kind != "image":
        raise LubanError(f"{a.run}: a {p.task} run takes {kind} inputs"
                         + (" (--input FILE)" if kind == "json" else f" (--{kind})" if kind in ("text", "image")
                            else ""))
    res = p.explain(inputs, target=a.target)
    from luban.explain import overlay_png, to_json

    rows = []
    for i, e in enumerate(res):
        head = f"{e.get('label', e.get('prediction'))}" + (f" ({e['score']:.3f})" if "score" in e else "")
        print(f"[{i + 1}] {head}; explaining {e.get('target') or 'the prediction'} — {e['method']}")
        if "tokens" in e:
            print("    " + highlight(e["text"], e["chars"]))
            top = sorted(e["tokens"], key=lambda t: -t["score"])[: a.top]
            print("    top: " + ", ".join(f"{t['text']} {t['score']:+.3f}" for t in top))
        elif "features" in e:
            print("    " + ", ".join(f"{f['feature']} {f['score']:+.3f}" for f in e["features"][: a.top]))
        else:
            out_dir = Path(a.output_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            png = out_dir / f"explain_{i + 1}.png"
            overlay_png(e["image"], e["attribution"], png)
            print(f"    overlay: {png}")
        rows.append(to_json(e))
    if a.output:
        Path(a.output).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        print(f"explanations: {a.output}")


def highlight(text: str, scores: list[float]) -> str:
    """The text with the characters that pushed toward the class in bold green, against it in red (a terminal)."""
    import sys

    if not sys.stdout.isatty() or not scores:
        return text
    peak = max(abs(s) for s in scores) or 1.0
    out = []
    for ch, s in zip(text, scores):
        if abs(s) >= 0.25 * peak:
            out.append(f"\x1b[1;{32 if s > 0 else 31}m{ch}\x1b[0m")
        else:
            out.append(ch)
    return "".join(out)


def add_parsers(sub) -> None:
    x = sub.add_parser("explain", help="why a run predicted what it did: token / character scores of texts, feature "
                                       "scores of table rows, pixel overlays of images")
    x.add_argument("run")
    x.add_argument("--text", action="append", help="a text to explain (repeatable)")
    x.add_argument("--image", action="append", help="an image file to explain (repeatable)")
    x.add_argument("--input", help="a file of inputs (as for luban predict); the first --limit rows")
    x.add_argument("--limit", type=int, default=20)
    x.add_argument("--target", help="the class to explain (default: the predicted one)")
    x.add_argument("--top", type=int, default=8, help="tokens / features listed per input")
    x.add_argument("--output", help="also write the explanations as JSON lines")
    x.add_argument("--output-dir", default=".", help="where image overlays (explain_N.png) go")
    x.add_argument("--device", default="cpu")
    x.set_defaults(fn=_cmd_explain)

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
