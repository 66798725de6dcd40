"""Slices and fairness: every test metric per value of the columns in evaluation.slices (with row counts and
bootstrap 95% intervals), the worst slice and the largest gap, and, for binary classification with
evaluation.sensitive, fairlearn's demographic-parity and equalized-odds differences.

The slice columns are read from the raw data files (`capture`, before cleaning keeps only what the model uses),
keyed by each row's source line, and looked up for the test rows the task evaluated (`Task.split_lines`). The
intervals resample the slice's rows (luban.evaluate.significance.resampled_rows, seeded by the run's seed) and
recompute every metric on each resample, vectorized (confusion counts for classification, error sums for
regression), so a slice costs milliseconds.
"""

from __future__ import annotations

import numpy as np

from luban.errors import DataError

RESAMPLES = 1000
MISSING = "(missing)"
_LOWER = {"mse", "rmse", "mae"}


def slice_columns(cfg) -> list[tuple[str, object]]:
    """(YAML path, column) for every column the evaluation slices by: evaluation.slices, then evaluation.sensitive."""
    ev = cfg.evaluation
    out = [("evaluation.slices", c) for c in ev.slices]
    if ev.sensitive is not None and ev.sensitive not in ev.slices:
        out.append(("evaluation.sensitive", ev.sensitive))
    return out


def _column(frame, ref, where: str) -> str:
    from luban.data.readers import LINE

    cols = [c for c in frame.columns if c != LINE]
    if isinstance(ref, int):
        if 0 <= ref < len(cols):
            return cols[ref]
        raise DataError(f"{where}: column index {ref} is out of range ({frame.attrs.get('source', 'data')} has "
                        f"{len(cols)} columns)")
    if ref in cols:
        return ref
    raise DataError(f"{where}: column {ref!r} not found in {frame.attrs.get('source', 'data')}; its columns are: "
                    f"{', '.join(map(str, cols))}")


def _text(v) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return MISSING
    s = str(v).strip()
    return s if s else MISSING


def capture(cfg, frames: dict) -> dict | None:
    """{split: {column: {source line: value}}} from the raw frames, for the columns the config slices by; None when
    it slices by nothing. A column missing from a file is a DataError naming the setting."""
    cols = slice_columns(cfg)
    if not cols:
        return None
    from luban.data.readers import LINE

    out = {}
    for split, frame in frames.items():
        if frame is None:
            continue
        lines = frame[LINE].tolist()
        out[split] = {str(ref): dict(zip(lines, map(_text, frame[_column(frame, ref, where)])))
                      for where, ref in cols}
    return out


def test_groups(captured: dict, lines: list[int]) -> dict[str, np.ndarray]:
    """Each slice column's value for the test rows (source `lines`): from the test file, or the training file the
    test rows were carved out of."""
    source = captured.get("test") or captured["train"]
    return {col: np.asarray([values.get(int(line), MISSING) for line in lines], dtype=object)
            for col, values in source.items()}


# ----------------------------------------------------------------------------------------------- metrics


def _class_stats(y, p, k: int, present: list[int], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy and precision / recall / F1 (macro, micro, weighted over `present` classes) of each resample
    (rows of `idx`), from its confusion counts."""
    cells = (y[idx] * k + p[idx])  # R x n
    r = idx.shape[0]
    conf = np.zeros((r, k * k))
    np.add.at(conf, (np.repeat(np.arange(r), idx.shape[1]), cells.ravel()), 1)
    conf = conf.reshape(r, k, k)[:, present][:, :, present]
    tp = np.diagonal(conf, axis1=1, axis2=2)
    true, pred = conf.sum(2), conf.sum(1)
    n = idx.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(pred > 0, tp / pred, 0.0)
        rec = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(pred + true > 0, 2 * tp / (pred + true), 0.0)
    acc = (y[idx] == p[idx]).mean(1)
    out = {"accuracy": acc}
    w = true / np.maximum(true.sum(1, keepdims=True), 1)
    for name, v in (("precision", prec), ("recall", rec), ("f1", f1)):
        out[f"{name}_macro"] = v.mean(1)
        out[f"{name}_weighted"] = (v * w).sum(1)
        out[f"{name}_micro"] = tp.sum(1) / n  # single-label: every micro average is the accuracy
    return out


def _reg_stats(y, p, idx: np.ndarray) -> dict[str, np.ndarray]:
    yt, yp = y[idx], p[idx]
    mse = ((yp - yt) ** 2).mean(1)
    sst = ((yt - yt.mean(1, keepdims=True)) ** 2).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1 - mse * yt.shape[1] / sst, np.nan)
    return {"mse": mse, "rmse": np.sqrt(mse), "mae": np.abs(yp - yt).mean(1), "r2": r2}


def _one_slice(rows: dict, idx: np.ndarray, rng, resamples: int) -> dict:
    from luban.evaluate.metrics import classification_metrics, regression_metrics, scalars
    from luban.evaluate.significance import resampled_rows

    y, p = np.asarray(rows["y_true"]), np.asarray(rows["y_pred"])
    ys, ps = y[idx], p[idx]
    if rows["kind"] == "classification":
        point = dict(scalars(classification_metrics(ys, ps, rows["labels"])))
        k = len(rows["labels"])
        present = sorted({int(v) for v in np.concatenate([ys, ps])})
        stats = lambda j: _class_stats(ys, ps, k, present, j)  # noqa: E731
    else:
        point = dict(scalars(regression_metrics(ys, ps)))
        stats = lambda j: _reg_stats(ys.astype(float), ps.astype(float), j)  # noqa: E731
    draws: dict[str, list] = {}
    for j in resampled_rows(len(idx), rng, resamples):
        for name, v in stats(j).items():
            draws.setdefault(name, []).append(v)
    ci = {}
    for name, parts in draws.items():
        v = np.concatenate(parts)
        v = v[~np.isnan(v)]
        if name in point and len(v):
            lo, hi = np.percentile(v, [2.5, 97.5])
            ci[name] = [round(float(lo), 4), round(float(hi), 4)]
    return {"rows": int(len(idx)), **{k: round(float(v), 4) for k, v in point.items()}, "ci95": ci}


def slice_metrics(rows: dict, groups: dict[str, np.ndarray], main_metric: str, seed: int,
                  sensitive: str | None = None, resamples: int = RESAMPLES) -> dict:
    """metrics.json's `slices`: per column and value every metric with rows and ci95; per column the worst value
    and the gap between the best and the worst (main metric); overall the worst slice and the largest gap; and
    `fairness` for a binary classifier with a sensitive column."""
    lower = main_metric in _LOWER
    rng = np.random.default_rng(seed)
    columns, worst, gap = {}, None, None
    for col, values in groups.items():
        per = {}
        for v in sorted(set(values), key=str):
            per[v] = _one_slice(rows, np.flatnonzero(values == v), rng, resamples)
        scored = [(v, m[main_metric]) for v, m in per.items() if not np.isnan(m.get(main_metric, np.nan))]
        entry = {"values": per}
        if scored:
            order = sorted(scored, key=lambda t: t[1], reverse=not lower)  # best first
            (best_v, best), (worst_v, bad) = order[0], order[-1]
            entry.update(worst={"value": worst_v, main_metric: bad, "rows": per[worst_v]["rows"]},
                         gap=round(abs(best - bad), 4), best={"value": best_v, main_metric: best})
            cand = {"column": col, "value": worst_v, main_metric: bad, "rows": per[worst_v]["rows"]}
            if worst is None or (bad > worst[main_metric] if lower else bad < worst[main_metric]):
                worst = cand
            if gap is None or entry["gap"] > gap["gap"]:
                gap = {"column": col, "gap": entry["gap"], "best": best_v, "worst": worst_v}
        columns[col] = entry
    out = {"metric": main_metric, "columns": columns, "worst_slice": worst, "largest_gap": gap,
           "method": f"per slice of the test rows; 95% intervals: bootstrap over the slice's rows ({resamples:,} "
                     f"resamples, seed {seed})"}
    if sensitive is not None:
        out["fairness"] = fairness(rows, groups[sensitive], sensitive)
    return out


def fairness(rows: dict, groups: np.ndarray, column: str) -> dict:
    """Demographic-parity and equalized-odds differences (fairlearn) of a binary classifier across the groups of
    the sensitive column; the positive class is the second label (labels sort as numbers or text: 1 over 0)."""
    labels = rows.get("labels") or []
    if rows["kind"] != "classification" or len(labels) != 2:
        return {"column": column, "skipped": "demographic parity and equalized odds are for binary classification "
                                             f"({len(labels) or 'no'} classes here)"}
    from fairlearn.metrics import demographic_parity_difference, equalized_odds_difference

    y, p = np.asarray(rows["y_true"]), np.asarray(rows["y_pred"])
    g = [str(v) for v in groups]
    return {"column": column, "positive_label": labels[1], "groups": len(set(g)),
            "demographic_parity_difference": round(float(demographic_parity_difference(y, p, sensitive_features=g)),
                                                   4),
            "equalized_odds_difference": round(float(equalized_odds_difference(y, p, sensitive_features=g)), 4)}


def summary_line(s: dict) -> str:
    """One line for the CLI: the worst slice and the largest gap (and the fairness differences)."""
    m = s["metric"]
    parts = []
    if s.get("worst_slice"):
        w = s["worst_slice"]
        parts.append(f"worst slice {w['column']}={w['value']}: {m} {w[m]:.4f} ({w['rows']} rows)")
    if s.get("largest_gap"):
        g = s["largest_gap"]
        parts.append(f"largest gap {g['gap']:.4f} in {g['column']} ({g['best']} vs {g['worst']})")
    f = s.get("fairness") or {}
    if "demographic_parity_difference" in f:
        parts.append(f"{f['column']}: demographic parity diff {f['demographic_parity_difference']:.4f}, "
                     f"equalized odds diff {f['equalized_odds_difference']:.4f}")
    return "slices: " + "; ".join(parts) if parts else ""


def report_section(s: dict) -> str:
    """The report's "Slices" section: a table per column (rows, main metric with its interval, other metrics)."""
    import html

    E = html.escape
    m = s["metric"]
    parts = ["<h2>Slices (test)</h2>"]
    line = summary_line(s)
    if line:
        parts.append(f"<p>{E(line.removeprefix('slices: '))}</p>")
    for col, entry in s["columns"].items():
        values = entry["values"]
        if not values:
            continue
        others = [k for k in next(iter(values.values())) if k not in ("rows", "ci95", m)][:4]
        head = (f"<table><tr><th class=l>{E(col)}</th><th>rows</th><th>{E(m)}</th><th>95% interval</th>" +
                "".join(f"<th>{E(k)}</th>" for k in others) + "</tr>")
        body = []
        for v, r in values.items():
            ci = r["ci95"].get(m)
            cls = " class=lose" if entry.get("worst", {}).get("value") == v and len(values) > 1 else ""
            body.append(f"<tr><td class=l>{E(str(v))}</td><td>{r['rows']}</td><td{cls}>{r.get(m, float('nan')):.4f}"
                        f"</td><td>{'' if ci is None else f'{ci[0]:.4f} … {ci[1]:.4f}'}</td>" +
                        "".join(f"<td>{r.get(k, float('nan')):.4f}</td>" for k in others) + "</tr>")
        parts.append(head + "".join(body) + "</table>")
    f = s.get("fairness")
    if f and "demographic_parity_difference" in f:
        parts.append(f"<p>Fairness by <code>{E(f['column'])}</code> ({f['groups']} groups, positive class "
                     f"{E(str(f['positive_label']))}): demographic-parity difference "
                     f"{f['demographic_parity_difference']:.4f}, equalized-odds difference "
                     f"{f['equalized_odds_difference']:.4f} (fairlearn; 0 is parity).</p>")
    elif f:
        parts.append(f"<p class=muted>{E(f['skipped'])}</p>")
    parts.append(f"<p class=muted>{E(s['method'])}.</p>")
    return "".join(parts)


def task_slices(task, test) -> dict | None:
    """metrics.json's `slices` for a trained task's test scores (a Scores with its per-row predictions), or None
    when the config slices by nothing."""
    if task.slice_source is None:
        return None
    rows = getattr(test, "rows", None)
    lines = task.split_lines("test")
    if not rows or lines is None:
        return None
    ev = task.cfg.evaluation
    groups = test_groups(task.slice_source, lines)
    return slice_metrics(rows, groups, task.main_metric, task.cfg.seed,
                         None if ev.sensitive is None else str(ev.sensitive))
