"""The `search:` section turned into Optuna suggestions, applied to a config tree.

Parameters are sampled in the order written; a parameter with `when: {path: value}` is sampled only when those
earlier parameters took those values (e.g. kernel sizes only for model.type textcnn). Every path is checked against
the config schema before the first trial, so a typo fails fast with the search.space key named.
"""

from __future__ import annotations

import copy

from luban.config import SearchConfig, SearchParam, validate
from luban.errors import ConfigError


def _set(tree: dict, path: str, value) -> dict:
    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"search.space.{path}: {p} is not a section")
    node[parts[-1]] = value
    return tree


def apply_params(tree: dict, params: dict) -> dict:
    """The config tree with sampled values set (and no search section). Choosing a different model.type starts
    that model's section afresh, so keys of the previous model type do not leak into it."""
    out = copy.deepcopy(tree)
    out.pop("search", None)
    new_type = params.get("model.type")
    if new_type is not None and (out.get("model") or {}).get("type") != new_type:
        out["model"] = {"type": new_type}
    for path, value in params.items():
        _set(out, path, value)
    return out


def suggest(trial, space: dict[str, SearchParam]) -> dict:
    """Sample one configuration (define-by-run; conditional parameters skipped when their `when` fails)."""
    chosen: dict = {}
    for path, p in space.items():
        if p.when and any(chosen.get(k, _MISSING) != v for k, v in p.when.items()):
            continue
        if p.type == "choice":
            # Optuna stores categorical choices as JSON-like scalars; lists are chosen by index
            if _plain(p.values):
                chosen[path] = trial.suggest_categorical(path, p.values)
            else:
                chosen[path] = p.values[trial.suggest_categorical(path, list(range(len(p.values))))]
        elif p.type == "int":
            chosen[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            chosen[path] = trial.suggest_float(path, p.low, p.high, log=p.type == "loguniform",
                                               step=p.step if p.type == "uniform" else None)
    return chosen


_MISSING = object()


def _plain(values: list) -> bool:
    return all(isinstance(v, (str, int, float, bool)) or v is None for v in values)


def _get(tree: dict, path: str):
    node = tree
    for p in path.split("."):
        if not isinstance(node, dict) or p not in node:
            return _MISSING
        node = node[p]
    return node


def config_point(tree: dict, space: dict[str, SearchParam]) -> tuple[dict, list[str]]:
    """The config's own values for the searched parameters, as Optuna stores them (a choice of lists by its
    index), so the search can start from the configuration the user already has. Returns the point and the paths
    whose config value lies outside their distribution (those are left to the sampler)."""
    point: dict = {}
    outside: list[str] = []
    chosen: dict = {}
    for path, p in space.items():
        if p.when and any(chosen.get(k, _MISSING) != v for k, v in p.when.items()):
            continue
        value = _get(tree, path)
        if p.type == "choice":
            if value in p.values:
                chosen[path] = value
                point[path] = value if _plain(p.values) else p.values.index(value)
                continue
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and p.low <= value <= p.high:
            if p.type != "int" or float(value).is_integer():
                chosen[path] = value
                point[path] = int(value) if p.type == "int" else float(value)
                continue
        outside.append(path)
    return point, outside


def grid(space: dict[str, SearchParam]) -> dict[str, list]:
    """The grid sampler's search space: every parameter must be a choice or a stepped uniform/int."""
    out = {}
    for path, p in space.items():
        if p.when:
            raise ConfigError(f"search.space.{path}: the grid sampler does not take conditional parameters")
        if p.type == "choice":
            out[path] = list(p.values) if _plain(p.values) else list(range(len(p.values)))
        elif p.step is not None or p.type == "int":
            step = p.step or 1
            n = int(round((p.high - p.low) / step)) + 1
            out[path] = [(int if p.type == "int" else float)(p.low + i * step) for i in range(n)]
        else:
            raise ConfigError(f"search.space.{path}: the grid sampler needs a choice or a step for {p.type}")
    return out


def check_space(tree: dict, search: SearchConfig, source: str) -> None:
    """Fail before any trial if a path is unknown or a candidate value does not validate."""
    for path, p in search.space.items():
        candidates = p.values if p.type == "choice" else [p.low, p.high]
        for v in candidates:
            value = int(v) if p.type == "int" else v
            trial_tree = apply_params(tree, {path: value, **(p.when or {})})
            try:
                validate(trial_tree, source)
            except ConfigError as e:
                raise ConfigError(f"search.space.{path} = {value!r} does not make a valid config:\n{e}") from None

