"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import html
from pathlib import Path

from luban.config import LOWER_IS_BETTER, RunConfig

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;margin:2rem;
color:#1d2330;max-width:1100px}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d5d9e0;padding:.3rem .6rem;text-align:right}
th{background:#f3f5f8}td.l,th.l{text-align:left}.muted{color:#667}.charts{display:flex;gap:1.5rem;flex-wrap:wrap}
svg text{font-size:11px;fill:#445}.win{color:#0a7b34;font-weight:600}.lose{color:#b3261e;font-weight:600}"""

E = html.escape


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return E(str(v))


def _line_chart(title: str, xs: list, series: dict[str, list[float]], w=460, h=240) -> str:
    pts = [v for ys in series.values() for v in ys if v == v]
    if not xs or not pts:
        return ""
    lo, hi = min(pts), max(pts)
    hi = hi if hi > lo else lo + 1e-9
    x0, x1, y0, y1 = 50, w - 15, h - 30, 25
    sx = lambda i: x0 + (x1 - x0) * (i / max(1, len(xs) - 1))  # noqa: E731
    sy = lambda v: y0 - (y0 - y1) * ((v - lo) / (hi - lo))  # noqa: E731
    colors = ["#2f6fde", "#e0672b", "#1a9b5b", "#8e44ad"]
    out = [f'<svg width="{w}" height="{h}" role="img" aria-label="{E(title)}">',
           f'<text x="{x0}" y="15" style="font-weight:600">{E(title)}</text>',
           f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#99a"/>',
           f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#99a"/>',
           f'<text x="2" y="{y1 + 4}">{hi:.4g}</text><text x="2" y="{y0}">{lo:.4g}</text>',
           f'<text x="{x0}" y="{h - 8}">epoch {xs[0]}</text><text x="{x1 - 50}" y="{h - 8}">epoch {xs[-1]}</text>']
    for k, (name, ys) in enumerate(series.items()):
        c = colors[k % len(colors)]
        path = " ".join(f"{sx(i):.1f},{sy(v):.1f}" for i, v in enumerate(ys) if v == v)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="{path}"/>')
        out += [f'<circle cx="{sx(i):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{c}"/>' for i, v in enumerate(ys) if v == v]
        out.append(f'<text x="{x1 - 150}" y="{y1 + 14 * k + 5}" style="fill:{c}">{E(name)}</text>')
    out.append("</svg>")
    return "".join(out)


def _confusion(cm: list[list[int]], labels: list[str]) -> str:
    if not cm or len(labels) > 40:
        return ""
    peak = max(max(r) for r in cm) or 1
    rows = ["<table><tr><th class=l>true \\ predicted</th>" + "".join(f"<th>{E(l)}</th>" for l in labels) + "</tr>"]
    for lab, r in zip(labels, cm):
        cells = "".join(f'<td style="background:rgba(47,111,222,{0.08 + 0.8 * v / peak:.2f})">{v}</td>' for v in r)
        rows.append(f"<tr><th class=l>{E(lab)}</th>{cells}</tr>")
    return "".join(rows) + "</table>"


def per_class_table(pc: dict, what: str = "class") -> str:
    if not pc:
        return ""
    rows = [f"<table><tr><th class=l>{E(what)}</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"]
    rows += [f"<tr><td class=l>{E(c)}</td><td>{v['precision']:.4f}</td><td>{v['recall']:.4f}</td>"
             f"<td>{v['f1']:.4f}</td><td>{v['support']}</td></tr>" for c, v in pc.items()]
    return "".join(rows) + "</table>"


def _comparison(metrics: dict) -> str:
    test, base = metrics["test"], metrics.get("baseline")
    keys = [k for k in ("f1", "precision", "accuracy", "f1_macro", "precision_macro", "recall_macro", "rmse", "mae",
                        "r2", "mse", "map50", "map", "map75", "mean_confidence", "class_entropy_ratio", "kid", "loss",
                        "perplexity", "bleu", "chrf", "rouge_1", "rouge_2", "rouge_l",
                        "ndcg", "hr", "recall", "mrr", "coverage") if k in test]
    head = "<tr><th class=l>model</th>" + "".join(f"<th>test {k}</th>" for k in keys) + "</tr>"
    rows = [head, "<tr><td class=l>luban model</td>"]
    for k in keys:
        cls = ""
        if base and k in base["test"]:
            better = test[k] < base["test"][k] if k in LOWER_IS_BETTER else test[k] > base["test"][k]
            cls = ' class="win"' if better else ' class="lose"'
        rows.append(f"<td{cls}>{test[k]:.4f}</td>")
    rows.append("</tr>")
    if base:
        rows.append(f"<tr><td class=l>baseline: {E(base['name'])}</td>" +
                    "".join(f"<td>{_fmt(base['test'].get(k, float('nan')))}</td>" for k in keys) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _worst(examples: list[dict]) -> str:
    if not examples:
        return ""
    rows = ["<table><tr><th>line</th><th class=l>text</th><th class=l>true</th><th class=l>predicted</th>"
            "<th>confidence</th></tr>"]
    rows += [f"<tr><td>{e['line']}</td><td class=l>{E(e['text'][:300])}</td><td class=l>{E(e['label'])}</td>"
             f"<td class=l>{E(e['predicted'])}</td><td>{e['confidence']:.3f}</td></tr>" for e in examples]
    return "".join(rows) + "</table>"


def png_data_uri(image) -> str:
    """An HxWxC uint8 array (or PIL image) as an inline PNG for the report."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(path: Path, cfg: RunConfig, metrics: dict, history: list[dict],
                 extra_sections: list[str] | None = None) -> None:
    epochs = [h["epoch"] for h in history]
    main = metrics["main_metric"]
    charts = _line_chart("training loss", epochs, {"train loss": [h["train_loss"] for h in history]})
    charts += _line_chart(f"validation {main}", epochs, {f"val {main}": [h.get(f"val_{main}", float("nan"))
                                                                          for h in history]})
    test = metrics["test"]
    labels = list(test.get("per_class", {}).keys())
    data = metrics.get("data", {})
    t = metrics["timings"]
    env = metrics["environment"]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>luban report — {E(cfg.output.name or '')}"
        f"</title><style>{CSS}</style></head><body>",
        f"<h1>luban run <code>{E(cfg.output.name or '')}</code></h1>",
        f"<p class=muted>task {E(cfg.task)} · model {E(cfg.model.type)} · "
        f"{metrics['parameters']['total']:,} parameters · best epoch {metrics['best_epoch']} of "
        f"{metrics['epochs_run']}{' (early stop)' if metrics['stopped_early'] else ''} · "
        f"fit {t['fit_seconds']:.1f}s on {env['device']} {env['precision']} × {env['threads']} threads</p>",
        "<h2>Test results beside the baseline</h2>" if metrics.get("baseline") else "<h2>Test results</h2>",
        _comparison(metrics),
        "<h2>Learning curves</h2>", f"<div class=charts>{charts}</div>",
    ]
    if "confusion_matrix" in test:
        parts += ["<h2>Confusion matrix (test)</h2>", _confusion(test["confusion_matrix"], labels),
                  "<h2>Per-class results (test)</h2>", per_class_table(test.get("per_class", {}))]
    if test.get("worst_examples"):
        parts += ["<h2>Most confidently wrong test examples</h2>", _worst(test["worst_examples"])]
    splits = data.get("splits", {})
    parts += ["<h2>Data</h2><table><tr><th class=l>split</th><th>rows</th></tr>" +
              "".join(f"<tr><td class=l>{E(s)}</td><td>{n}</td></tr>" for s, n in splits.items()) + "</table>"]
    for c in data.get("cleaning", []):
        dropped = ", ".join(f"{n} {E(r)}" for r, n in c["dropped"].items()) or "nothing"
        parts.append(f"<p class=muted>{E(c['split'])}: {E(c['source'])}: {c['rows_in']} rows, "
                     f"dropped {dropped}</p>")
    parts += list(extra_sections or [])
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
