"""One file per task. The registry maps a config's `task` to its training and inference classes."""

from __future__ import annotations

import importlib

_REGISTRY = {
    "text_classification": ("luban.tasks.text_classification", "TextClassificationTask",
                            "TextClassificationPredictor"),
    "tabular_regression": ("luban.tasks.tabular", "TabularTask", "TabularPredictor"),
    "tabular_classification": ("luban.tasks.tabular", "TabularTask", "TabularPredictor"),
    "image_classification": ("luban.tasks.image_classification", "ImageClassificationTask",
                             "ImageClassificationPredictor"),
    "object_detection": ("luban.tasks.object_detection", "ObjectDetectionTask", "ObjectDetectionPredictor"),
    "image_generation": ("luban.tasks.image_generation", "ImageGenerationTask", "ImageGenerationPredictor"),
    "translation": ("luban.tasks.seq2seq", "Seq2SeqTask", "Seq2SeqPredictor"),
    "summarization": ("luban.tasks.seq2seq", "Seq2SeqTask", "Seq2SeqPredictor"),
    "text_generation": ("luban.tasks.text_generation", "TextGenerationTask", "TextGenerationPredictor"),
    "speech_recognition": ("luban.tasks.speech", "SpeechTask", "SpeechPredictor"),
    "audio_classification": ("luban.tasks.speech", "SpeechTask", "SpeechPredictor"),
    "recommendation": ("luban.tasks.recommendation", "RecommendationTask", "RecommendationPredictor"),
    "token_classification": ("luban.tasks.token_classification", "TokenClassificationTask",
                             "TokenClassificationPredictor"),
}


def task_classes(name: str):
    module, task, predictor = _REGISTRY[name]
    mod = importlib.import_module(module)
    return getattr(mod, task), getattr(mod, predictor)
