"""The config of luban.models.speech (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("speech_recognition",), default_for=("speech_recognition",),
                builder="luban.models.speech:build_ctc")
class SpeechCTCConfig(ModelSection):
    """Speech recognition from scratch: a convolutional front end (4x time subsampling) + a BiGRU or
    Conformer-lite encoder, trained with CTC over characters or words."""

    type: Literal["ctc"] = "ctc"
    encoder: Literal["bigru", "conformer"] = "bigru"
    conv_channels: int = Field(64, gt=0)
    hidden_size: int = Field(192, gt=0, description="GRU hidden size per direction / conformer width")
    num_layers: int = Field(2, gt=0)
    nhead: int = Field(4, gt=0, description="conformer attention heads")
    dropout: float = Field(0.1, ge=0, lt=1)
    units: Literal["char", "word"] = Field("char", description="output units of the CTC head")
    beam_width: int = Field(1, gt=0, description="CTC decoding: 1 = greedy, more = prefix beam search")


@register_model(tasks=("audio_classification",), default_for=("audio_classification",),
                builder="luban.models.speech:build_classifier")
class AudioClassifierConfig(ModelSection):
    """Whole-utterance classification (keyword spotting, spoken commands): the same encoder + attention pooling."""

    type: Literal["audio_classifier"] = "audio_classifier"
    encoder: Literal["bigru", "conformer"] = "bigru"
    conv_channels: int = Field(64, gt=0)
    hidden_size: int = Field(128, gt=0)
    num_layers: int = Field(1, gt=0)
    nhead: int = Field(4, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)


@register_model(tasks=("speech_recognition",), builder="luban.models.speech:build_pretrained")
class PretrainedSpeechConfig(ModelSection):
    """A Hugging Face speech model from a folder: CTC (wav2vec2, HuBERT, ...) or Whisper-style seq2seq."""

    type: Literal["pretrained_speech"] = "pretrained_speech"
    pretrained: ClassVar[bool] = True
    path: str = Field(description="HF model folder (with its processor), or a hub id with allow_download: true")
    allow_download: bool = False
    trust_remote_code: bool = False
    freeze_feature_encoder: bool = Field(True, description="CTC models: keep the convolutional feature encoder "
                                         "frozen")
    language: str | None = Field(None, description="Whisper: language of the transcripts (e.g. zh, en)")
    max_new_tokens: int = Field(128, gt=0, description="Whisper: longest transcript generated")
