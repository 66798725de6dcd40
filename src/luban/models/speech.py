"""Speech models from scratch over log-mel features (batch, frames, n_mels) with per-utterance lengths.

The encoder is a convolutional front end (two stride-2 3x3 convolutions: 4x fewer frames) followed by either a
bidirectional GRU stack or Conformer-lite blocks (feed-forward / self-attention / depthwise convolution, each
residual). `CTCModel` puts a linear CTC head on it (index 0 = blank); `AudioClassifier` pools it with masked
attention for whole-utterance labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def subsampled(lengths: torch.Tensor) -> torch.Tensor:
    for _ in range(2):
        lengths = (lengths - 1) // 2 + 1
    return lengths


class ConvFrontEnd(nn.Module):
    def __init__(self, n_mels: int, channels: int, out_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        freq = (((n_mels - 1) // 2 + 1) - 1) // 2 + 1
        self.proj = nn.Linear(channels * freq, out_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv1(feats.unsqueeze(1)))           # (B, C, T/2, F/2)
        valid = torch.arange(x.shape[2], device=x.device)[None, :] < ((lengths - 1) // 2 + 1)[:, None]
        x = x * valid[:, None, :, None]                       # padding stays zero, so it cannot leak into frames
        x = F.gelu(self.conv2(x))                             # (B, C, T/4, F/4)
        b, c, t, f = x.shape
        return self.proj(x.permute(0, 2, 1, 3).reshape(b, t, c * f))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask: nn.MultiheadAttention's parameters (same names, same
    initialization, so its weights load), computed with scaled_dot_product_attention from the input's own shapes —
    nn.MultiheadAttention's inference fast path traces to fixed shapes, which breaks ONNX export."""

    def __init__(self, dim: int, nhead: int, dropout: float):
        super().__init__()
        self.nhead, self.dropout = nhead, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (z.reshape(b, t, self.nhead, d // self.nhead).transpose(1, 2)
                   for z in F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class ConformerBlock(nn.Module):
    def __init__(self, dim: int, nhead: int, dropout: float, kernel: int = 15):
        super().__init__()
        self.ff1 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, nhead, dropout)
        self.conv_norm = nn.LayerNorm(dim)
        self.pointwise = nn.Conv1d(dim, 2 * dim, 1)
        self.depthwise = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.conv_bn = nn.BatchNorm1d(dim)
        self.conv_out = nn.Conv1d(dim, dim, 1)
        self.ff2 = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 4 * dim), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.out_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.drop(self.attn(h, pad))
        h = F.glu(self.pointwise(self.conv_norm(x).transpose(1, 2)), dim=1)
        h = h.masked_fill(pad[:, None, :], 0.0)  # the depthwise convolution must see zeros past the end
        h = self.conv_out(F.silu(self.conv_bn(self.depthwise(h))))
        x = x + self.drop(h.transpose(1, 2))
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x)


class SpeechEncoder(nn.Module):
    def __init__(self, n_mels: int, encoder: str = "bigru", conv_channels: int = 64, hidden_size: int = 192,
                 num_layers: int = 2, nhead: int = 4, dropout: float = 0.1):
        super().__init__()
        self.kind = encoder
        self.front = ConvFrontEnd(n_mels, conv_channels, hidden_size)
        self.drop = nn.Dropout(dropout)
        if encoder == "bigru":
            self.rnn = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True,
                              dropout=dropout if num_layers > 1 else 0.0)
            self.out_dim = 2 * hidden_size
        else:
            if hidden_size % nhead:
                raise ValueError(f"hidden_size ({hidden_size}) must be divisible by nhead ({nhead})")
            self.blocks = nn.ModuleList(ConformerBlock(hidden_size, nhead, dropout) for _ in range(num_layers))
            self.out_dim = hidden_size

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.drop(self.front(feats, lengths))
        out_len = subsampled(lengths).clamp(min=1, max=x.shape[1])
        if self.kind == "bigru":
            packed = nn.utils.rnn.pack_padded_sequence(x, out_len.cpu(), batch_first=True, enforce_sorted=False)
            y, _ = self.rnn(packed)
            x, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        else:
            pad = torch.arange(x.shape[1], device=x.device)[None, :] >= out_len[:, None]
            for block in self.blocks:
                x = block(x, pad)
        return self.drop(x), out_len


class CTCModel(nn.Module):
    """Log-probabilities over (blank + units) per subsampled frame."""

    def __init__(self, n_mels: int, vocab_size: int, **encoder_kw):
        super().__init__()
        self.encoder = SpeechEncoder(n_mels, **encoder_kw)
        self.head = nn.Linear(self.encoder.out_dim, vocab_size)

    def forward(self, feats, lengths):
        x, out_len = self.encoder(feats, lengths)
        return self.head(x).float().log_softmax(dim=-1), out_len


class AudioClassifier(nn.Module):
    def __init__(self, n_mels: int, num_classes: int, **encoder_kw):
        super().__init__()
        self.encoder = SpeechEncoder(n_mels, **encoder_kw)
        self.score = nn.Linear(self.encoder.out_dim, 1)
        self.head = nn.Linear(self.encoder.out_dim, num_classes)

    def forward(self, feats, lengths):
        x, out_len = self.encoder(feats, lengths)
        pad = torch.arange(x.shape[1], device=x.device)[None, :] >= out_len[:, None]
        w = self.score(x).squeeze(-1).float().masked_fill(pad, float("-inf")).softmax(dim=1)
        return self.head((w.unsqueeze(-1) * x.float()).sum(dim=1))


def _encoder_settings(cfg) -> dict:
    return dict(encoder=cfg.encoder, conv_channels=cfg.conv_channels, hidden_size=cfg.hidden_size,
                num_layers=cfg.num_layers, nhead=cfg.nhead, dropout=cfg.dropout)


def build_ctc(cfg, *, n_mels: int, n_out: int, **_) -> CTCModel:
    """The registry's builder for SpeechCTCConfig: n_out units + the CTC blank."""
    return CTCModel(n_mels, n_out + 1, **_encoder_settings(cfg))


def build_classifier(cfg, *, n_mels: int, n_out: int, **_) -> AudioClassifier:
    """The registry's builder for AudioClassifierConfig (luban.models.speech_config)."""
    return AudioClassifier(n_mels, n_out, **_encoder_settings(cfg))


class HFSpeech(nn.Module):
    """A Hugging Face speech recognizer (AutoModelForCTC or AutoModelForSpeechSeq2Seq) as luban's module."""

    def __init__(self, model):
        super().__init__()
        self.model = model


def build_pretrained(cfg, *, source: str, seq2seq: bool, pad_token_id: int | None = None, **_) -> HFSpeech:
    """The registry's builder for PretrainedSpeechConfig: the HF model at `source`, an encoder-decoder (Whisper) or
    a CTC model (wav2vec2, HuBERT, ...: mean CTC loss, padding with the tokenizer's `pad_token_id`, its feature
    encoder frozen with freeze_feature_encoder). Offline unless cfg.allow_download."""
    from transformers import AutoModelForCTC, AutoModelForSpeechSeq2Seq

    from luban.errors import ConfigError

    try:
        if seq2seq:
            model = AutoModelForSpeechSeq2Seq.from_pretrained(source, local_files_only=not cfg.allow_download,
                                                              trust_remote_code=cfg.trust_remote_code)
        else:
            model = AutoModelForCTC.from_pretrained(source, local_files_only=not cfg.allow_download,
                                                    trust_remote_code=cfg.trust_remote_code,
                                                    ctc_loss_reduction="mean", ctc_zero_infinity=True,
                                                    pad_token_id=pad_token_id)
    except (OSError, ValueError) as e:
        raise ConfigError(f"model.path: cannot load a speech recognizer from {source}: {e}") from None
    if not seq2seq and cfg.freeze_feature_encoder and hasattr(model, "freeze_feature_encoder"):
        model.freeze_feature_encoder()
    return HFSpeech(model)
