"""How a run ended, in words a user acts on: whether it lost to its baseline, whether training stopped while the
validation curve was still improving, whether the best epoch was the first of many. Each note names the likely
cause and the remedy. The pipeline stores them in metrics.json (`notes`), prints them under the console summary
and report.html shows them above the results; every task gets them from its metrics and history alone. Where the main
metric is a loss the baseline is scored by too (a language model against its bigram counts), a lost run also says
whether it underfits (training loss still above the baseline's) or overfits."""

from __future__ import annotations

from luban.config import LOWER_IS_BETTER
from luban.evaluate.significance import WORSE

MIN_EPOCHS = 3  # a curve shorter than this says nothing about "still improving" or "first of many"
STILL_IMPROVING = 0.002  # relative gain over the last few epochs that counts as still improving


def _curve(history: list[dict], metric: str) -> list[tuple[float, float]]:
    """(epoch, value) of the whole-epoch validation records that hold the metric."""
    key = f"val_{metric}"
    return [(float(h["epoch"]), float(h[key])) for h in history
            if not h.get("partial") and isinstance(h.get(key), (int, float)) and h[key] == h[key]]


def run_notes(metrics: dict, history: list[dict], *, unit: str = "epoch", more: str = "trainer.epochs",
              metric: str | None = None) -> list[dict]:
    """The notes of a finished run: [{"kind", "text"}], kind one of lost_to_baseline, still_improving,
    best_first. `unit` names one point of the validation curve (epoch, boosting round), `more` the setting that
    trains longer; `metric` the curve's metric (default: the main metric)."""
    main = metrics.get("main_metric", "accuracy")
    metric = metric or main
    lower = metric in LOWER_IS_BETTER
    notes = []
    curve = _curve(history, metric)
    n = len(curve)
    best_epoch = metrics.get("best_epoch") or 0
    improving = False
    if n >= MIN_EPOCHS and not metrics.get("stopped_early"):
        values = [v for _, v in curve]
        best_at = min(range(n), key=lambda i: values[i]) if lower else max(range(n), key=lambda i: values[i])
        k = max(1, n // 5)  # the last fifth of the curve against what came before it
        before = min(values[:-k]) if lower else max(values[:-k])
        after = min(values[-k:]) if lower else max(values[-k:])
        gain = (before - after) if lower else (after - before)
        improving = best_at == n - 1 and gain > STILL_IMPROVING * max(abs(before), 1e-9)
        if improving:
            notes.append({"kind": "still_improving", "text": (
                f"validation {metric} was still improving at the last {unit} ({int(curve[-1][0])}: "
                f"{values[-1]:.4g}, from {before:.4g} before the last {k} {unit}{'s' * (k > 1)}): the model is "
                f"probably undertrained; remedy: raise {more} (early stopping ends the run once the curve turns)")})
    if n >= MIN_EPOCHS and best_epoch and best_epoch <= curve[0][0] and n >= 2 * MIN_EPOCHS:
        notes.append({"kind": "best_first", "text": (
            f"the best validation {metric} came at the first {unit} of {n}: every later {unit} was worse, so "
            f"the model overfits or the learning rate is too high from the start; remedy: lower the learning rate, "
            f"add regularization (weight decay, dropout) or more data, and stop early")})
    lost = _lost(metrics, main)
    if lost:
        cause = _fit_cause(metrics, history, improving, more) or (
            "it was still improving, so it is undertrained: train longer first" if improving else
            "a simpler model fits this data better: keep the baseline, or try another model type, more data, "
            "or `luban tune` from this config")
        notes.append({"kind": "lost_to_baseline", "text": f"{lost}; likely remedy: {cause}"})
    return notes


def _fit_cause(metrics: dict, history: list[dict], improving: bool, more: str) -> str | None:
    """Underfitting or overfitting, told by the training loss against the baseline's validation loss, where the main
    metric is the loss both are scored by (language models against their bigram baseline); else None."""
    if metrics.get("main_metric") != "loss":
        return None
    base = ((metrics.get("baseline") or {}).get("validation") or {}).get("loss")
    train = [float(h["train_loss"]) for h in history
             if not h.get("partial") and isinstance(h.get("train_loss"), (int, float))]
    val = (metrics.get("validation") or {}).get("loss")
    if not isinstance(base, (int, float)) or not train or not isinstance(val, (int, float)):
        return None
    if train[-1] >= base or improving:
        where = ("still above" if train[-1] >= base else "below") + f" the baseline's validation loss ({base:.4g})"
        return (f"the model underfits (not overfits): its training loss ended at {train[-1]:.4g}, {where}"
                f"{', and the validation curve was still falling' if improving else ''}; train more: raise {more} "
                "(more optimizer steps), a larger trainer.lr or a wider model (a vocabulary of thousands of tokens "
                "needs more steps and width than an alphabet)")
    return (f"the model overfits: its training loss ({train[-1]:.4g}) went below the baseline's validation loss "
            f"({base:.4g}) while its own validation loss stayed at {val:.4g}; remedy: more text, model.dropout, "
            "a larger trainer.weight_decay, a smaller model or fewer steps")


def _lost(metrics: dict, main: str) -> str | None:
    """Why the run counts as worse than its baseline, or None."""
    base = metrics.get("baseline") or {}
    v = metrics.get("vs_baseline")
    name = base.get("name", "the baseline")
    if v:
        if v.get("verdict") == WORSE:
            from luban.evaluate.significance import describe

            return f"the baseline ({name}) beats the model on the test rows beyond noise ({describe(v)})"
        return None
    ours, theirs = (metrics.get("test") or {}).get(main), (base.get("test") or {}).get(main)
    if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
        return None
    worse = ours > theirs if main in LOWER_IS_BETTER else ours < theirs
    if worse:
        return (f"the baseline ({name}) scores better than the model: test {main} {theirs:.4g} (baseline) vs "
                f"{ours:.4g} (model), not tested for noise")
    return None
