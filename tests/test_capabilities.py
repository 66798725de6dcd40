"""What a run can do is the capabilities its task predictor declares (luban.capabilities), checked with isinstance."""

from __future__ import annotations

from pathlib import Path

import pytest

from luban.capabilities import (CAPABILITIES, Chats, DecodesTogether, Embeds, Evaluates, Explains, GeneratesImages,
                                GeneratesText, Predicts, Recommends, ScoresTokens, StreamsTokens, TaskPredictor)
from luban.errors import LubanError
from luban.config import TASKS
from luban.tasks import task_classes

EXPECTED = {
    "text_classification": {Predicts, Evaluates, Explains},
    "tabular_regression": {Predicts, Evaluates, Explains},
    "image_classification": {Predicts, Evaluates, Explains},
    "object_detection": {Predicts, Evaluates},
    "image_generation": {GeneratesImages},
    "translation": {Predicts, Evaluates, GeneratesText, DecodesTogether},
    "text_generation": {Predicts, Evaluates, GeneratesText, Chats, StreamsTokens, DecodesTogether, ScoresTokens},
    "speech_recognition": {Predicts, Evaluates},
    "recommendation": {Predicts, Evaluates, Recommends},
    "token_classification": {Predicts, Evaluates},
    "text_embedding": {Predicts, Evaluates, Embeds},
}


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_each_task_predictor_declares_its_capabilities(task):
    cls = task_classes(task)[1]
    assert issubclass(cls, TaskPredictor)
    assert {c for c in CAPABILITIES.values() if issubclass(cls, c)} == EXPECTED[task]
    assert not cls.__abstractmethods__  # every declared capability is implemented


def test_every_registered_task_is_covered():
    assert {task_classes(t)[1] for t in TASKS} == {task_classes(t)[1] for t in EXPECTED}


class _Classifier(TaskPredictor, Predicts):
    input_kind = "text"
    task = "text_classification"

    def predict_inputs(self, inputs, top_k: int | None = None):
        return [{"label": "a", "probabilities": {"a": 0.75, "b": 0.25}} for _ in inputs]

    def read_inputs(self, path):
        return ["x"]

    def class_labels(self):
        return ["a", "b"]


class _Writer(TaskPredictor, GeneratesText):
    task = "translation"

    def generate_text(self, prompt, **knobs):
        return {"text": prompt[::-1]}

    def stream_text(self, prompt, **knobs):
        yield from prompt[::-1]

    def prompt_tokens(self, prompt=None, messages=None):
        return len(prompt)


def _facade(impl) -> TaskPredictor:
    """What luban.load returns: the task predictor itself, its run and backend set."""
    impl.run_dir, impl.backend = Path("runs/x"), "torch"
    return impl


class _Cfg:
    task = "text_classification"


def test_the_facade_offers_what_the_task_predictor_implements():
    clf = _facade(_Classifier(_Cfg(), Path("."), "cpu"))
    caps = clf.capabilities()
    assert caps["predict"] and caps["inputs"] == "text" and caps["predict_options"] == ["top_k"]
    assert not any(caps[k] for k in ("generate_text", "chat", "stream_events", "batch_events", "recommend",
                                     "similar_items", "generate_images"))
    assert clf.supports(Predicts) and not clf.supports(Evaluates)
    assert clf.labels == ["a", "b"] and clf.predict_proba(["x"]).tolist() == [[0.75, 0.25]]
    with pytest.raises(LubanError, match="does not generate text"):
        clf.generate_text("hi")
    with pytest.raises(LubanError, match="does not evaluate"):
        clf.evaluate("test.csv")
    assert clf.prompt_tokens("hi") is None

    writer = _facade(_Writer(_Cfg(), Path("."), "cpu"))
    caps = writer.capabilities()
    assert caps["generate_text"] and not caps["predict"] and caps["inputs"] is None and not caps["stream_events"]
    # without per-token events: the text pieces, then one closing event whose finish reason is unknown
    events = list(writer.stream_events("abc"))
    assert "".join(e["text"] for e in events) == "cba" and events[-1] == {"text": "", "token": None,
                                                                         "finish_reason": None}
    with pytest.raises(LubanError, match="does not chat"):
        list(writer.stream_events(messages=[{"role": "user", "content": "x"}]))
    with pytest.raises(LubanError, match="does not predict"):
        writer.predict(["x"])


def test_a_declared_capability_must_be_implemented():
    class Half(TaskPredictor, Recommends):
        def recommend(self, user, k=None, history=None, exclude_seen=None, features=None):
            return {}

    with pytest.raises(TypeError, match="abstract"):
        Half(_Cfg(), Path("."), "cpu")
