"""A task's fitted state: one `model/processor.json` (+ the asset files it names), written and read here.

What a task fits on its training rows besides the weights (labels, a tokenizer's vocabulary, scaling statistics,
id maps...) is made of parts. A part is either plain JSON (a dict of sizes, a list of labels) or a `Processor`:
the scikit-learn-style contract, with tabular's preprocessor as the template:

    fit(train rows)            learn the state from the training split (returns self, or a new instance)
    encode(rows)               rows -> model inputs (ids, scaled numbers...)
    state()                    the fitted state as JSON
    save_assets(folder, name)  files that do not belong in JSON (a tokenizer.json, weights of n-grams), written
                               under the run's model folder; returns their paths relative to it
    from_state(state, folder, name)   the fitted processor back (classmethod)

A task saves its parts with `save(folder, task, labels=..., tokenizer=..., model={...})`, and reads them back
with `load(folder)["labels"]`. processor.json is {"format", "task", "parts": {name: state}, "assets": [paths]}.

Runs written before processor.json (run format 0, see luban.manifest) kept each part in its own file; `load`
reads those through `legacy()`, the one place that knows the old names.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from luban.errors import RunError

FILE = "processor.json"
FORMAT = 1


class Processor:
    """Fitted preprocessing state of a task (see the module doc): a subclass implements fit/encode/state/from_state,
    and save_assets when part of its state is better kept in its own file."""

    def fit(self, train):
        raise NotImplementedError

    def encode(self, rows):
        raise NotImplementedError

    def state(self):
        raise NotImplementedError

    def save_assets(self, folder: Path, name: str) -> list[str]:
        return []

    @classmethod
    def from_state(cls, state, folder: Path, name: str):
        raise NotImplementedError


class Saved(dict):
    """The parts read back: a part that is not there is a RunError naming where it was looked for."""

    def __init__(self, parts: dict, path: Path, legacy: bool = False):
        super().__init__(parts)
        self.path, self.legacy = path, legacy

    def __missing__(self, name):
        old = " or ".join(str(self.path.parent / f) for f in LEGACY.get(name, [f"{name}.json"]))
        where = f"{self.path} is missing (and so is {old}, of a run written before it)" if self.legacy \
            else str(self.path)
        raise RunError(f"{where}: the run's fitted state has no {name!r} (missing or corrupted model files)")


def save(folder: Path, task: str, assets: tuple[str, ...] = (), **parts) -> dict:
    """Write `folder`/processor.json from `parts` (None parts are left out); a Processor part writes its assets.
    `assets`: files the task wrote itself into `folder` that belong to its fitted state (listed, not written)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    states, files = {}, list(assets)
    for name, part in parts.items():
        if part is None:
            continue
        if isinstance(part, Processor):
            files += part.save_assets(folder, name)
            part = part.state()
        states[name] = part
    doc = {"format": FORMAT, "task": task, "parts": states, "assets": sorted(set(files))}
    tmp = folder / (FILE + ".tmp")
    tmp.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, folder / FILE)
    return doc


def load(folder: Path) -> Saved:
    """The parts of `folder`/processor.json; for a run written before it, the old per-part files (legacy)."""
    path = Path(folder) / FILE
    if not path.is_file():
        return legacy(folder)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        parts, version = doc["parts"], doc["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunError(f"{path}: unreadable, missing or corrupted model files ({type(e).__name__}: {e})") from None
    if not isinstance(version, int) or version > FORMAT:
        raise RunError(f"{path}: processor format {version!r}; this luban reads up to {FORMAT}: upgrade luban")
    return Saved(parts, path)


# Run format 0: each part in its own JSON file of the model folder (a tokenizer's in its sub-folder), under
# these names. Asset files (vocab.json, tokenizer.json, ...) were already where the parts' from_state looks.
LEGACY = {"labels": ["labels.json"], "model": ["model_meta.json", "lm_meta.json"], "image": ["image_meta.json"],
          "detector": ["detector_meta.json"], "tagger": ["tagger.json"], "units": ["units.json"],
          "preprocessing": ["preprocessing.json"], "recommender": ["recommender.json"], "ids": ["ids.json"],
          "user_features": ["user_features.json"], "item_features": ["item_features.json"],
          "tokenizer": ["tokenizer/encoder.json", "tokenizer/ngrams.json"],
          "source_tokenizer": ["source_tokenizer/encoder.json"]}


def legacy(folder: Path) -> Saved:
    """The parts of a run written before processor.json, read from their old files."""
    folder = Path(folder)
    parts = {}
    for name, files in LEGACY.items():
        for f in files:
            if (folder / f).is_file():
                try:
                    parts[name] = json.loads((folder / f).read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise RunError(f"{folder / f}: unreadable, missing or corrupted model files "
                                   f"({type(e).__name__}: {e})") from None
                break
    return Saved(parts, folder / FILE, legacy=True)
