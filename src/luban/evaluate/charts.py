"""The report's charts: matplotlib figures (no display, no pyplot state) rendered as SVG and inlined in the page.

Text stays text in the SVG (svg.fonttype none) with a CJK-capable font list, so the browser draws Chinese labels
and class names with whatever CJK font it has. Every chart has axes, ticks, a grid and a legend; y-limits are
chosen so that noise looks like noise (see `y_limits`). Without matplotlib `available()` is False and the report
says so instead of drawing.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings

import numpy as np

COLORS = ["#2f6fde", "#e0672b", "#1a9b5b", "#8e44ad", "#c0392b", "#7f8c8d"]
FONTS = ["Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
         "PingFang SC", "Microsoft YaHei", "SimHei", "Noto Sans CJK JP", "Arial Unicode MS", "DejaVu Sans"]
STYLE = {"svg.fonttype": "none", "svg.hashsalt": "luban", "font.family": "sans-serif", "font.sans-serif": FONTS,
         "font.size": 9, "axes.titlesize": 10, "axes.titleweight": "bold", "axes.titlelocation": "left",
         "axes.grid": True, "grid.color": "#e3e6eb", "grid.linewidth": 0.8, "axes.edgecolor": "#8a90a0",
         "axes.spines.top": False, "axes.spines.right": False, "axes.axisbelow": True, "legend.fontsize": 8,
         "legend.framealpha": 0.85, "legend.edgecolor": "#dde", "xtick.color": "#445", "ytick.color": "#445",
         "axes.labelcolor": "#334", "text.color": "#1d2330", "lines.linewidth": 1.8}
MIN_RATE_SPAN = 0.10  # a metric in [0, 1] gets a y axis at least 10 points tall: a 0.7-point dip is not a cliff
MIN_RELATIVE_SPAN = 0.2  # other metrics (RMSE, BLEU): an axis at least 20% of their magnitude tall
MAX_SCATTER = 1500  # points drawn in the predicted-vs-true scatter (a seeded sample of the test rows)
MAX_CURVE = 600  # points kept of a ROC / PR curve


def available() -> bool:
    try:
        import matplotlib.figure  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _style():
    import matplotlib

    log = logging.getLogger("matplotlib.font_manager")
    level = log.level
    log.setLevel(logging.ERROR)  # "findfont: Font family ... not found" for each absent CJK font
    try:
        with matplotlib.rc_context(STYLE), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Glyph ... missing from font": the browser draws the text, not us
            yield
    finally:
        log.setLevel(level)


def _figure(w: float = 5.0, h: float = 3.1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), layout="constrained")
    return fig, fig.subplots()


_counter = [0]


def _svg(fig) -> str:
    """The figure as an inline <svg> element; its ids get a prefix of their own so that several charts on one page
    never share a marker or clip path."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    s = buf.getvalue()
    s = re.sub(r"\s*<metadata>.*?</metadata>", "", s[s.index("<svg"):], flags=re.S)
    _counter[0] += 1
    p = f"c{_counter[0]}-"
    s = re.sub(r'id="([^"]+)"', lambda m: f'id="{p}{m.group(1)}"', s)
    s = re.sub(r'(href="#|url\(#)([^")]+)', lambda m: f"{m.group(1)}{p}{m.group(2)}", s)
    return f'<figure class=chart>{s}</figure>'


def y_limits(values, metric: str | None = None) -> tuple[float, float]:
    """Sensible y limits: losses from 0; a metric in [0, 1] on an axis at least MIN_RATE_SPAN tall (kept inside
    [0, 1]); anything else (an RMSE, BLEU) on an axis at least MIN_RELATIVE_SPAN of its magnitude tall, not below 0
    when no value is. Never an auto-zoom that draws noise as a cliff."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return 0.0, 1.0
    lo, hi = min(v), max(v)
    if lo >= 0 and (metric or "").lower().endswith("loss"):
        return 0.0, (hi * 1.08) or 1.0
    mid = (lo + hi) / 2
    if 0 <= lo and hi <= 1:
        span = max(hi - lo, MIN_RATE_SPAN) * 1.15
        a, b = mid - span / 2, mid + span / 2
        if a < 0:
            a, b = 0.0, b - a
        if b > 1:
            a, b = max(0.0, a - (b - 1)), 1.0
        pad = 0.02 * (b - a)
        return a - (pad if a <= 0 else 0), b + pad
    span = max(hi - lo, MIN_RELATIVE_SPAN * max(abs(lo), abs(hi)), 1e-9) * 1.15
    a, b = mid - span / 2, mid + span / 2
    if lo >= 0 > a:
        a, b = 0.0, b - a
    return a, b


def line_chart(title: str, xs: list, series: dict[str, list], *, xlabel: str = "epoch", ylabel: str | None = None,
               metric: str | None = None, best_x=None, hlines: dict[str, float] | None = None) -> str:
    """Lines over xs (one per series, NaN gaps allowed); `best_x` a dashed vertical marker, `hlines` dashed
    horizontal reference lines (e.g. the baseline)."""
    from matplotlib.ticker import MaxNLocator

    if not xs or not any(v is not None and v == v for ys in series.values() for v in ys):
        return ""
    with _style():
        fig, ax = _figure()
        marker = "o" if len(xs) <= 40 else None
        for k, (name, ys) in enumerate(series.items()):
            ys = [float("nan") if v is None else float(v) for v in ys]
            ax.plot(xs, ys, marker=marker, markersize=3.5, color=COLORS[k % len(COLORS)], label=name)
        refs = list((hlines or {}).values())
        for k, (name, v) in enumerate((hlines or {}).items()):
            ax.axhline(v, color="#555", linestyle=(0, (5, 3)), linewidth=1.2, label=name)
        if best_x is not None:
            ax.axvline(best_x, color="#1a9b5b", linestyle=":", linewidth=1.4, label=f"best {xlabel} {best_x}")
        ax.set_ylim(*y_limits([v for ys in series.values() for v in ys] + refs, metric))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.legend(loc="best")
        return _svg(fig)


def learning_curves(history: list[dict], main: str, best_epoch: int | None, baseline: dict | None) -> list[str]:
    """Train and validation loss on one chart; the validation main metric with the baseline's validation score as
    a line; the best epoch marked on both."""
    if not history:
        return []
    xs = [h["epoch"] for h in history]
    best = best_epoch if best_epoch in xs else None
    losses = {"train loss": [h.get("train_loss") for h in history]}
    if any(h.get("val_loss") is not None for h in history):
        losses["validation loss"] = [h.get("val_loss") for h in history]
    charts = [line_chart("loss", xs, losses, ylabel="loss", metric="loss", best_x=best)]
    vals = [h.get(f"val_{main}") for h in history]
    if main != "loss" and any(v is not None for v in vals):
        ref = (baseline or {}).get("validation", {}).get(main)
        charts.append(line_chart(f"validation {main}", xs, {f"model (validation {main})": vals}, ylabel=main,
                                 metric=main, best_x=best,
                                 hlines={f"baseline {ref:.4g}": ref} if isinstance(ref, (int, float)) else None))
    return [c for c in charts if c]


def _thin(*arrays):
    n = len(arrays[0])
    if n <= MAX_CURVE:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, MAX_CURVE).round().astype(int))
    return tuple(a[idx] for a in arrays)


def binary_charts(rows: dict) -> list[str]:
    """ROC (with AUC), precision-recall (with average precision) and a calibration plot for the positive class
    (the second label), from the model's test probabilities."""
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y, probs, labels = np.asarray(rows["y_true"]), rows.get("probs"), rows["labels"]
    if probs is None or len(labels) != 2 or len(np.unique(y)) < 2:
        return []
    pos = labels[1]
    t, p = (y == 1).astype(int), np.asarray(probs, dtype=float)[:, 1]
    out = []
    with _style():
        fpr, tpr, _ = roc_curve(t, p)
        fpr, tpr = _thin(fpr, tpr)
        fig, ax = _figure(3.6, 3.4)
        ax.plot(fpr, tpr, color=COLORS[0], label=f"model (AUC {roc_auc_score(t, p):.3f})")
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate",
               title=f"ROC · positive class {pos}")
        ax.legend(loc="lower right")
        out.append(_svg(fig))

        prec, rec, _ = precision_recall_curve(t, p)
        rec, prec = _thin(rec, prec)
        fig, ax = _figure(3.6, 3.4)
        ax.plot(rec, prec, color=COLORS[1], drawstyle="steps-post",
                label=f"model (AP {average_precision_score(t, p):.3f})")
        ax.axhline(t.mean(), color="#999", linestyle="--", linewidth=1, label=f"chance ({t.mean():.2f})")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
               title=f"precision-recall · positive class {pos}")
        ax.legend(loc="lower left")
        out.append(_svg(fig))

        frac, mean_p = calibration_curve(t, p, n_bins=10, strategy="uniform")
        fig, ax = _figure(3.6, 3.4)
        ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfectly calibrated")
        ax.plot(mean_p, frac, marker="o", markersize=4, color=COLORS[2], label="model")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel=f"predicted P({pos})", ylabel=f"observed share of {pos}",
               title="calibration · 10 equal-width bins")
        ax.legend(loc="upper left")
        out.append(_svg(fig))
    return out


def regression_scatter(rows: dict, seed: int = 0) -> str:
    """Predicted vs true on the test rows (a seeded sample of at most MAX_SCATTER), with the y = x line."""
    y, p = np.asarray(rows["y_true"], dtype=float), np.asarray(rows["y_pred"], dtype=float)
    ok = np.isfinite(y) & np.isfinite(p)
    y, p = y[ok], p[ok]
    if len(y) == 0:
        return ""
    n = len(y)
    if n > MAX_SCATTER:
        idx = np.sort(np.random.default_rng(seed).choice(n, MAX_SCATTER, replace=False))
        ys, ps = y[idx], p[idx]
    else:
        ys, ps = y, p
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    pad = 0.04 * ((hi - lo) or 1.0)
    with _style():
        fig, ax = _figure(4.4, 4.0)
        shown = f"{len(ys):,} of {n:,} test rows" if n > len(ys) else f"{n:,} test rows"
        ax.scatter(ys, ps, s=10, alpha=0.5, color=COLORS[0], linewidths=0, label=shown)
        ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#c0392b", linestyle="--", linewidth=1.2,
                label="y = x (perfect)")
        ax.set(xlim=(lo - pad, hi + pad), ylim=(lo - pad, hi + pad), xlabel="true value", ylabel="predicted value",
               title="predicted vs true (test)")
        ax.set_aspect("equal", adjustable="box")
        ax.legend(loc="upper left")
        return _svg(fig)


def bar_chart(title: str, labels: list[str], values: list[float], *, xlabel: str = "", top: int = 25) -> str:
    """Horizontal bars, largest first (the `top` largest; e.g. a tree model's feature importance)."""
    pairs = sorted(zip(labels, values), key=lambda p: -p[1])[:top]
    if not pairs:
        return ""
    with _style():
        fig, ax = _figure(5.0, max(2.0, 0.28 * len(pairs) + 1.0))
        names = [str(p[0]) for p in pairs][::-1]
        ax.barh(range(len(pairs)), [p[1] for p in pairs][::-1], color=COLORS[0])
        ax.set_yticks(range(len(pairs)))
        ax.set_yticklabels(names)
        ax.set_title(title)
        if xlabel:
            ax.set_xlabel(xlabel)
        return _svg(fig)
