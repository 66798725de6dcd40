"""Audio in: reading (soundfile), resampling (soxr), log-mel features and training-time augmentation.

Every clip becomes mono float32 at the configured sample rate. An unreadable, empty or too-long file is an error
naming it (or, with ``data.skip_bad_files``, skipped and counted). Features are log-mel filter banks (the mel
matrix from ``transformers.audio_utils``, STFT in torch) with optional per-utterance mean/variance normalization;
SpecAugment masks and speed / noise perturbation happen only in training.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from luban.config import AudioAugmentConfig, AudioConfig
from luban.data.readers import LINE
from luban.errors import ConfigError, DataError

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".mp3", ".aiff", ".aif", ".au"}


def _soundfile():
    try:
        import soundfile
    except ImportError:
        raise ConfigError("audio tasks need soundfile and soxr: pip install 'luban[audio]'") from None
    return soundfile


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    if rate_in == rate_out:
        return wave
    import soxr

    return soxr.resample(wave, rate_in, rate_out).astype(np.float32)


def read_audio(path: str | Path, cfg: AudioConfig) -> np.ndarray:
    """A mono float32 waveform at cfg.sample_rate; DataError naming the file when it cannot be used."""
    sf = _soundfile()
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    try:
        wave, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile raises its own error types for corrupt or unknown formats
        raise DataError(f"{path}: not a readable audio file ({e})") from None
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]
    if wave.size == 0 or not np.any(wave):
        raise DataError(f"{path}: empty audio (no samples, or silence only)")
    if not np.all(np.isfinite(wave)):
        raise DataError(f"{path}: audio holds NaN or infinite samples")
    seconds = wave.size / rate
    if seconds > cfg.max_seconds:
        raise DataError(f"{path}: {seconds:.1f} s is longer than preprocessing.audio.max_seconds "
                        f"({cfg.max_seconds:g} s)")
    return resample(wave, rate, cfg.sample_rate)


def list_audio_folder(folder: Path, pattern: str | None) -> pd.DataFrame:
    """Audio files under `folder` with a label each: the regex `pattern`'s `label` group on the file name (no
    suffix), else the sub-folder name. Columns: audio (path), label, _line (1-based position in the listing)."""
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no audio files ({', '.join(sorted(AUDIO_SUFFIXES))}) in this folder")
    rows = []
    regex = None
    if pattern is not None:
        try:
            regex = re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"data.label_pattern: not a valid regular expression ({e})") from None
        if "label" not in regex.groupindex:
            raise ConfigError("data.label_pattern: needs a named group (?P<label>...)")
    for f in files:
        if regex is not None:
            m = regex.search(f.stem)
            if m is None:
                raise DataError(f"{f}: file name does not match data.label_pattern {pattern!r}")
            label = m.group("label")
        else:
            if f.parent == Path(folder):
                raise DataError(f"{f}: not in a class sub-folder; put files in folder/<label>/ or set "
                                "data.label_pattern")
            label = f.parent.name
        rows.append((str(f), label))
    df = pd.DataFrame(rows, columns=["audio", "label"], dtype=object)
    df[LINE] = range(1, len(df) + 1)
    df.attrs["source"] = str(folder)
    return df


class LogMel:
    """Waveform (numpy or torch, 1-D) -> log-mel features (frames, n_mels)."""

    def __init__(self, cfg: AudioConfig):
        from transformers.audio_utils import mel_filter_bank

        self.cfg = cfg
        self.win = int(round(cfg.sample_rate * cfg.win_ms / 1000))
        self.hop = int(round(cfg.sample_rate * cfg.hop_ms / 1000))
        self.n_fft = 1 << (self.win - 1).bit_length()
        fb = mel_filter_bank(num_frequency_bins=self.n_fft // 2 + 1, num_mel_filters=cfg.n_mels, min_frequency=20.0,
                             max_frequency=cfg.sample_rate / 2, sampling_rate=cfg.sample_rate, norm="slaney",
                             mel_scale="slaney")
        self.filters = torch.from_numpy(fb.astype(np.float32))  # (freq_bins, n_mels)
        self.window = torch.hann_window(self.win)

    def __call__(self, wave) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        if x.numel() < self.win:
            x = torch.nn.functional.pad(x, (0, self.win - x.numel()))
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win, window=self.window,
                          center=True, return_complex=True).abs().pow(2)  # (freq_bins, frames)
        mel = torch.log(spec.T @ self.filters + 1e-6)
        if self.cfg.normalize:
            mel = (mel - mel.mean(dim=0, keepdim=True)) / (mel.std(dim=0, keepdim=True) + 1e-5)
        return mel


def spec_augment(feats: torch.Tensor, aug: AudioAugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Zero random frequency bands and time spans (SpecAugment) of (frames, n_mels) features."""
    feats = feats.clone()
    frames, bins = feats.shape
    for _ in range(aug.freq_masks):
        w = int(torch.randint(0, aug.freq_mask_width + 1, (1,), generator=g))
        if 0 < w < bins:
            f0 = int(torch.randint(0, bins - w + 1, (1,), generator=g))
            feats[:, f0:f0 + w] = 0.0
    widest = int(frames * aug.time_mask_fraction)
    for _ in range(aug.time_masks):
        w = int(torch.randint(0, widest + 1, (1,), generator=g)) if widest > 0 else 0
        if 0 < w < frames:
            t0 = int(torch.randint(0, frames - w + 1, (1,), generator=g))
            feats[t0:t0 + w, :] = 0.0
    return feats


def perturb(wave: np.ndarray, aug: AudioAugmentConfig, rate: int, g: torch.Generator) -> np.ndarray:
    """Random speed change (resampling, which also shifts pitch, as in Kaldi's speed perturbation) and noise."""
    if aug.speed is not None:
        lo, hi = aug.speed
        factor = lo + (hi - lo) * float(torch.rand((), generator=g))
        wave = resample(wave, int(round(rate * factor)), rate)
    if aug.noise_snr_db is not None:
        lo, hi = aug.noise_snr_db
        snr = lo + (hi - lo) * float(torch.rand((), generator=g))
        power = float(np.mean(wave ** 2)) / (10 ** (snr / 10))
        noise = torch.randn(wave.shape, generator=g).numpy() * np.sqrt(power)
        wave = (wave + noise).astype(np.float32)
    return wave
