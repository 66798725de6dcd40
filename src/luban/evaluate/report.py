"""report.html: one self-contained page (inline CSS and SVG, no scripts, no network)."""

from __future__ import annotations

import html
from pathlib import Path

from luban.config import RunConfig
from luban.evaluate.significance import BEATS, TIE, WORSE, describe

CSS = """body{font-family:system-ui,-apple-system,"Segoe UI","PingFang SC","Microsoft YaHei","Noto Sans CJK SC",sans-serif;margin:2rem;
color:#1d2330;max-width:1120px}h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #dde}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #d5d9e0;padding:.3rem .6rem;text-align:right}
th{background:#f3f5f8}td.l,th.l{text-align:left}.muted{color:#667}
.charts{display:flex;gap:1rem;flex-wrap:wrap;align-items:flex-start}figure.chart{margin:0}figure.chart svg{max-width:100%;height:auto}.win{color:#0a7b34;font-weight:600}
.lose{color:#b3261e;font-weight:600}.tie{color:#8a6d00;font-weight:600}
.verdict{padding:.5rem .8rem;border-left:4px solid #99a;background:#f6f7f9;max-width:60rem}
.verdict.win{border-color:#0a7b34}.verdict.lose{border-color:#b3261e}.verdict.tie{border-color:#d4a800}
.verdict span{color:#1d2330;font-weight:400}.note{color:#8a6d00}"""

E = html.escape
VERDICT_CLASS = {BEATS: "win", WORSE: "lose", TIE: "tie"}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return E(str(v))


def _line_chart(title: str, xs: list, series: dict[str, list[float]], xlabel: str = "epoch", **kw) -> str:
    """A line chart (matplotlib, inline SVG) or, without matplotlib, a note saying why there is none."""
    from luban.evaluate import charts

    return charts.line_chart(title, xs, series, xlabel=xlabel, **kw) if charts.available() else NO_CHARTS


NO_CHARTS = ("<p class=note>Charts need matplotlib, which is not installed here (<code>pip install matplotlib</code>); "
             "the tables are complete without it.</p>")


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
    v = metrics.get("vs_baseline")
    rows = [head, "<tr><td class=l>luban model</td>"]
    for k in keys:
        cls = f' class="{VERDICT_CLASS[v["verdict"]]}"' if v and k == v["metric"] else ""
        rows.append(f"<td{cls}>{test[k]:.4f}</td>")
    rows.append("</tr>")
    if base:
        rows.append(f"<tr><td class=l>baseline: {E(base['name'])}</td>" +
                    "".join(f"<td>{_fmt(base['test'].get(k, float('nan')))}</td>" for k in keys) + "</tr>")
    out = "<table>" + "".join(rows) + "</table>"
    if v:
        mc = f"; McNemar's exact test p = {v['mcnemar_p']:.3g}" if "mcnemar_p" in v else ""
        out += (f'<p class="verdict {VERDICT_CLASS[v["verdict"]]}">{E(v["verdict"][0].upper() + v["verdict"][1:])} '
                f"<span>— test {E(describe(v))} on {v['rows']:,} rows: {E(v['method'])}{mc}.</span></p>")
    elif base:
        out += ("<p class=muted>These differences are not tested for noise (this task keeps no per-row test "
                "predictions of both models): small ones may be chance.</p>")
    return out


def _notes(notes: list[dict]) -> list[str]:
    """What the run's end says (luban.evaluate.verdict): lost to the baseline, still improving, best epoch first."""
    if not notes:
        return []
    cls = lambda n: "lose" if n["kind"] == "lost_to_baseline" else "tie"  # noqa: E731
    return ["<h2>Read this first</h2>"] + [f'<p class="verdict {cls(n)}">{E(n["text"][0].upper() + n["text"][1:])}'
                                          "</p>" for n in notes]


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


def charts_section(metrics: dict, history: list[dict], seed: int = 0) -> list[str]:
    """Learning curves, then ROC / PR / calibration (binary classification) or predicted vs true (regression)."""
    from luban.evaluate import charts

    if not charts.available():
        return ["<h2>Learning curves</h2>", NO_CHARTS]
    parts = []
    curves = charts.learning_curves(history, metrics["main_metric"], metrics.get("best_epoch"), metrics.get("baseline"))
    if curves:
        parts += ["<h2>Learning curves</h2>", f"<div class=charts>{''.join(curves)}</div>",
                  f"<p class=muted>Losses are drawn from 0, rates on an axis at least "
                  f"{charts.MIN_RATE_SPAN * 100:.0f} points tall and other metrics on one at least "
                  f"{charts.MIN_RELATIVE_SPAN:.0%} of their size tall, so that noise looks like noise.</p>"]
    rows = getattr(metrics["test"], "rows", None) or {}
    if rows.get("kind") == "classification":
        binary = charts.binary_charts(rows)
        if binary:
            parts += ["<h2>Ranking and calibration (test)</h2>", f"<div class=charts>{''.join(binary)}</div>"]
    elif rows.get("kind") == "regression":
        scatter = charts.regression_scatter(rows, seed)
        if scatter:
            parts += ["<h2>Predicted vs true (test)</h2>", f"<div class=charts>{scatter}</div>"]
    return parts


def write_report(path: Path, cfg: RunConfig, metrics: dict, history: list[dict],
                 extra_sections: list[str] | None = None) -> None:
    """report.html for a run. metrics["test"] may be a Scores (luban.evaluate.metrics) carrying the per-row test
    predictions: then the page also draws ROC / PR / calibration or the predicted-vs-true scatter."""
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
        *_notes(metrics.get("notes") or []),
        "<h2>Test results beside the baseline</h2>" if metrics.get("baseline") else "<h2>Test results</h2>",
        _comparison(metrics),
    ]
    parts += charts_section(metrics, history, cfg.seed)
    if metrics.get("slices"):
        from luban.evaluate.slices import report_section

        parts.append(report_section(metrics["slices"]))
    if metrics.get("privacy"):
        from luban.training.privacy import report_section as privacy_section

        parts.append(privacy_section(metrics["privacy"]))
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
        redacted = "".join(f"; redacted {r['count']} {E(k)} in {r['rows']} rows of {E(', '.join(r['columns']))}"
                           for k, r in (c.get("redacted") or {}).items())
        parts.append(f"<p class=muted>{E(c['split'])}: {E(c['source'])}: {c['rows_in']} rows, "
                     f"dropped {dropped}{redacted}</p>")
    parts += list(extra_sections or [])
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
