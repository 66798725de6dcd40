"""Speech: features, CTC decoding, WER/CER, a tiny recognizer and a keyword classifier trained on synthetic
"speech" (tones standing for symbols), pretrained HF CTC, and bad audio."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

sf = pytest.importorskip("soundfile")
pytest.importorskip("soxr")
pytest.importorskip("jiwer")

import luban  # noqa: E402
from conftest import speech_config  # noqa: E402
from luban.cli import main  # noqa: E402
from luban.config import AudioConfig  # noqa: E402
from luban.data.audio import LogMel, read_audio  # noqa: E402
from luban.errors import DataError  # noqa: E402

RATE = 8000
TONES = {"a": 500.0, "b": 1100.0, "c": 1900.0}


def tone(freq: float, seconds: float, rate: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def say(symbols: str, rng: np.random.Generator) -> np.ndarray:
    parts = [np.zeros(int(0.05 * RATE), np.float32)]
    for s in symbols:
        parts += [tone(TONES[s], rng.uniform(0.12, 0.18)), np.zeros(int(rng.uniform(0.04, 0.08) * RATE), np.float32)]
    return np.concatenate(parts) + rng.normal(0, 0.01, sum(len(p) for p in parts)).astype(np.float32)


@pytest.fixture(scope="module")
def spoken(tmp_path_factory) -> dict:
    """60 utterances of 1-4 symbols as WAV files + a manifest (audio,text)."""
    root = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        text = "".join(rng.choice(list(TONES), size=int(rng.integers(1, 5))))
        path = root / f"u{i:03d}.wav"
        sf.write(str(path), say(text, rng), RATE)
        rows.append((path.name, text))
    manifest = root / "all.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("audio", "text"), *rows])
    return {"root": root, "manifest": manifest, "rows": rows}


def test_log_mel_shapes_and_normalization():
    cfg = AudioConfig(sample_rate=RATE, n_mels=40, normalize=False)
    mel = LogMel(cfg)(tone(1000.0, 1.0))
    assert mel.shape == (1 + RATE // 80, 40)  # 10 ms hop, centered frames
    from transformers.audio_utils import hertz_to_mel, mel_to_hertz

    centers = mel_to_hertz(np.linspace(hertz_to_mel(20.0, "slaney"), hertz_to_mel(RATE / 2, "slaney"), 42),
                           "slaney")[1:-1]
    assert abs(centers[int(mel[10:-10].mean(0).argmax())] - 1000.0) < 120  # energy in the 1 kHz band
    normed = LogMel(AudioConfig(sample_rate=RATE, n_mels=40))(tone(1000.0, 1.0))
    assert torch.allclose(normed.mean(0), torch.zeros(40), atol=1e-4)
    assert torch.allclose(normed.std(0), torch.ones(40), atol=1e-3)


def test_ctc_greedy_collapses_and_beam_sums_alignments():
    from luban.generation.ctc import decode, greedy_decode, prefix_beam_search

    a, b = 1, 2
    path = [a, a, 0, a, b, b, 0]
    lp = torch.full((1, len(path), 3), -10.0)
    lp[0, torch.arange(len(path)), torch.tensor(path)] = 0.0
    assert greedy_decode(lp, torch.tensor([7])) == [[a, a, b]]
    assert greedy_decode(lp, torch.tensor([3])) == [[a]]  # frames past the length are ignored
    # two frames, p(blank)=0.6, p(a)=0.4: best path is blank-blank (""), but "a" has 0.16+0.24+0.24 = 0.64
    two = torch.log(torch.tensor([[0.6, 0.4], [0.6, 0.4]]))
    assert greedy_decode(two[None], torch.tensor([2])) == [[]]
    assert prefix_beam_search(two, beam=4) == [1]
    assert decode(two[None], torch.tensor([2]), beam=4) == [[1]]


def test_wer_cer_hand_computed():
    from luban.evaluate.asr import asr_metrics

    m = asr_metrics(["the cat sat", "你好世界"], ["the cat sit", "你好世"])
    assert m["wer"] == pytest.approx(2 / 4)    # 1 substituted word of 3 + 1 of 1
    assert m["cer"] == pytest.approx(2 / 13)   # a -> i, 界 deleted; 9 + 4 reference characters
    assert m["exact_match"] == 0.0
    assert asr_metrics(["a b"], ["a b"]) == {"wer": 0.0, "cer": 0.0, "exact_match": 1.0}


@pytest.fixture(scope="module")
def ctc_run(spoken, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return luban.train(speech_config(out, "ctc", spoken["manifest"]), quiet=True)


def test_tiny_ctc_model_overfits_synthetic_speech(ctc_run, spoken):
    m = json.loads((ctc_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["main_metric"] == "cer" and m["test"]["cer"] == 0.0 and m["test"]["exact_match"] == 1.0
    assert m["baseline"]["test"]["cer"] > 0.3
    p = luban.load(ctc_run)
    files = [str(spoken["root"] / name) for name, _ in spoken["rows"][:5]]
    out = p.predict(files)
    assert [o["text"] for o in out] == [t for _, t in spoken["rows"][:5]]
    assert all(o["audio_seconds"] > 0 and o["seconds"] >= 0 for o in out)
    wave, _ = sf.read(files[0], dtype="float32")
    assert p.predict([(wave, RATE)])[0]["text"] == spoken["rows"][0][1]
    ev = p.evaluate(spoken["manifest"])
    assert ev["cer"] == 0.0


def test_cli_transcribe_folder_and_file(ctc_run, spoken, capsys):
    assert main(["transcribe", str(ctc_run), str(spoken["root"] / spoken["rows"][1][0])]) in (0, None)
    row = json.loads(capsys.readouterr().out)
    assert row["text"] == spoken["rows"][1][1] and row["file"].endswith(spoken["rows"][1][0])
    main(["transcribe", str(ctc_run), str(spoken["root"])])
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 60 and json.loads(lines[0])["text"] == spoken["rows"][0][1]


def test_keyword_classifier_from_file_names(tmp_path):
    folder = tmp_path / "kws"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for word, freq in (("yes", 600.0), ("no", 1500.0)):
        for i in range(20):
            wave = tone(freq, rng.uniform(0.2, 0.4))
            sf.write(str(folder / f"{word}_{i}.wav"), wave + rng.normal(0, 0.01, len(wave)).astype(np.float32), RATE)
    cfg = speech_config(tmp_path / "runs", "kws", folder, task="audio_classification",
                        data={"validation": None, "test": None, "columns": {"audio": None, "text": None},
                              "label_pattern": "^(?P<label>[a-z]+)_", "split": {"validation": 0.2, "test": 0.2}},
                        model={"type": "audio_classifier", "conv_channels": 8, "hidden_size": 16},
                        trainer={"epochs": 15, "lr": 2e-2, "early_stopping": {"patience": None}})  # 8 validation clips: flat at first
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["accuracy"] == 1.0
    out = luban.load(run).predict([str(folder / "no_3.wav")])[0]
    assert out["label"] == "no" and out["score"] > 0.5

    # exported to ONNX and quantized to int8, the keyword model still gives the same answers
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_run
    from luban.compress.quantize import quantize_run

    assert export_run(run, quiet=True)["parity"]["argmax_agreement"] == 1.0
    onnx = luban.load(run)
    assert onnx.backend == "onnx"
    assert onnx.predict([str(folder / "no_3.wav")])[0]["probabilities"] == pytest.approx(out["probabilities"],
                                                                                         abs=1e-4)
    q = json.loads((quantize_run(run, "int8-dynamic", quiet=True) / "metrics.json").read_text(encoding="utf-8"))
    assert q["test"]["accuracy"] == 1.0


def test_bad_audio_is_named_or_skipped(tmp_path, spoken):
    from conftest import assert_no_run

    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00not really a wave file")
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, np.float32), RATE)
    cfg = AudioConfig(sample_rate=RATE)
    with pytest.raises(DataError, match="corrupt.wav: not a readable audio file"):
        read_audio(corrupt, cfg)
    with pytest.raises(DataError, match="empty.wav: empty audio"):
        read_audio(empty, cfg)
    odd = tmp_path / "odd.wav"  # stereo at 11,025 Hz -> mono at 8 kHz, same duration
    sf.write(str(odd), np.stack([tone(440, 0.5, 11025), tone(440, 0.5, 11025)], axis=1), 11025)
    wave = read_audio(odd, cfg)
    assert wave.ndim == 1 and abs(len(wave) - 4000) <= 2
    with pytest.raises(DataError, match="longer than preprocessing.audio.max_seconds"):
        read_audio(odd, AudioConfig(sample_rate=RATE, max_seconds=0.2))

    rows = [(str(spoken["root"] / n), t) for n, t in spoken["rows"][:30]] + [(str(corrupt), "ab")]
    manifest = tmp_path / "with_bad.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("audio", "text"), *rows])
    out = tmp_path / "runs"
    with pytest.raises(DataError, match=r"with_bad.csv: line 32: .*corrupt.wav"):
        luban.train(speech_config(out, "bad", manifest), quiet=True)
    assert_no_run(out, "bad")
    run = luban.train(speech_config(out, "skip", manifest, data={"skip_bad_files": True},
                                    trainer={"epochs": 1}), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["data"]["skipped_files"]["train"] == 1 and m["data"]["splits"]["train"] == 30


@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("w2v")
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2, "a": 3, "b": 4, "c": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    tok = transformers.Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), pad_token="<pad>", unk_token="<unk>",
                                            word_delimiter_token="|")
    fe = transformers.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=RATE, padding_value=0.0,
                                               do_normalize=True, return_attention_mask=True)
    transformers.Wav2Vec2Processor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(folder))
    torch.manual_seed(0)
    conf = transformers.Wav2Vec2Config(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=64, conv_dim=(16, 16, 16),
                                       conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2), num_conv_pos_embeddings=8,
                                       num_conv_pos_embedding_groups=2, pad_token_id=0, mask_time_prob=0.0,
                                       feat_extract_norm="layer", do_stable_layer_norm=True)
    transformers.Wav2Vec2ForCTC(conf).save_pretrained(str(folder))
    return folder


def test_pretrained_ctc_fine_tunes_and_reloads(tiny_wav2vec2, spoken, tmp_path, capsys):
    cfg = speech_config(tmp_path / "runs", "w2v", spoken["manifest"],
                        model={"type": "pretrained_speech", "path": str(tiny_wav2vec2),
                               "freeze_feature_encoder": False},
                        trainer={"epochs": 3, "lr": 1e-3})
    cfg["model"] = {k: v for k, v in cfg["model"].items()
                    if k in ("type", "path", "freeze_feature_encoder")}
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]  # it learns
    assert m["test"]["cer"] >= 0.0  # a barely trained model may insert more than the reference holds
    hf = run / "model" / "hf"
    assert (hf / "config.json").is_file() and any((hf / f).is_file() for f in ("processor_config.json",
                                                                                "preprocessor_config.json"))
    out = luban.load(run).predict([str(spoken["root"] / spoken["rows"][0][0])])
    assert isinstance(out[0]["text"], str)
    assert main(["compress", str(run), "--prune", "0.3"]) == 2  # export/compress: models trained from scratch
    assert "pretrained_speech run's backbone is a Hugging Face model" in capsys.readouterr().err
    assert not (run.parent / f"{run.name}-pruned30").exists()


@pytest.fixture(scope="module")
def tiny_whisper(tmp_path_factory) -> Path:
    """A tiny random Whisper (1+1 layers) with a byte-level BPE Whisper tokenizer and the 16 kHz feature extractor."""
    transformers = pytest.importorskip("transformers")
    from conftest import _byte_bpe

    folder = tmp_path_factory.mktemp("whisper")
    specials = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|zh|>", "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
    _byte_bpe(["abc cab bca a b c"] * 20, specials).model.save(str(folder))
    tok = transformers.WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), language="en",
                                        task="transcribe", predict_timestamps=False)
    fe = transformers.WhisperFeatureExtractor(feature_size=80, sampling_rate=16000)
    transformers.WhisperProcessor(feature_extractor=fe, tokenizer=tok).save_pretrained(str(folder))
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    end, start = ids["<|endoftext|>"], ids["<|startoftranscript|>"]
    torch.manual_seed(0)
    conf = transformers.WhisperConfig(vocab_size=len(tok), num_mel_bins=80, encoder_layers=1, decoder_layers=1,
                                      encoder_attention_heads=2, decoder_attention_heads=2, d_model=32,
                                      encoder_ffn_dim=64, decoder_ffn_dim=64, max_source_positions=1500,
                                      max_target_positions=64, pad_token_id=end, bos_token_id=end, eos_token_id=end,
                                      decoder_start_token_id=start)
    model = transformers.WhisperForConditionalGeneration(conf)
    gc = model.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id = start, end, end
    gc.no_timestamps_token_id = ids["<|notimestamps|>"]
    gc.forced_decoder_ids = gc.begin_suppress_tokens = gc.suppress_tokens = None
    model.save_pretrained(str(folder))
    return folder


def test_whisper_fine_tunes_and_transcribes(tiny_whisper, spoken, tmp_path):
    small = tmp_path / "small.csv"  # Whisper pads every clip to 30 s: keep the sets tiny
    with open(small, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("audio", "text")] + [(str(spoken["root"] / n), t) for n, t in spoken["rows"][:8]])
    cfg = speech_config(tmp_path / "runs", "whisper", small, trainer={"epochs": 2, "lr": 1e-3, "batch_size": 4})
    cfg["model"] = {"type": "pretrained_speech", "path": str(tiny_whisper), "max_new_tokens": 6}
    run = luban.train(cfg, quiet=True)
    history = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert history[-1]["val_loss"] < history[0]["val_loss"]
    cfgs = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    assert cfgs["preprocessing"]["audio"]["sample_rate"] == 16000  # the model's processor decides the rate
    out = luban.load(run).predict([str(spoken["root"] / spoken["rows"][0][0])])
    assert isinstance(out[0]["text"], str) and out[0]["audio_seconds"] > 0


def test_ctc_run_exports_quantizes_and_transcribes_on_onnx(ctc_run, spoken, tmp_path):
    pytest.importorskip("onnxruntime")
    import shutil

    from luban.compress.export import export_run
    from luban.compress.onnx_predictor import OrtModule
    from luban.compress.quantize import quantize_run

    run = Path(shutil.copytree(ctc_run, tmp_path / "runs" / "ctc"))
    meta = export_run(run, quiet=True)
    assert meta["output_names"] == ["log_probs", "output_lengths"] and meta["parity"]["max_abs_diff"] < 1e-4
    p = luban.load(run)
    assert isinstance(p.task_predictor.model, OrtModule)
    files = [str(spoken["root"] / name) for name, _ in spoken["rows"][:8]]
    assert [o["text"] for o in p.predict(files)] == [t for _, t in spoken["rows"][:8]]
    assert p.evaluate(spoken["manifest"])["cer"] == 0.0
    for method in ("int8-dynamic", "bf16"):
        q = quantize_run(run, method, quiet=True)
        assert json.loads((q / "metrics.json").read_text(encoding="utf-8"))["test"]["cer"] <= 0.02, method
        assert luban.load(q).predict(files[:1])[0]["text"] == spoken["rows"][0][1]


@pytest.mark.parametrize("encoder", ["bigru", "conformer"])
def test_encoders_export_to_onnx_for_any_batch_and_length(encoder, tmp_path):
    """Traced on one padded batch, the ONNX graph matches PyTorch on batches of other sizes and lengths (the
    Conformer's attention and the GRU's packed sequences follow the lengths given, not the traced ones)."""
    pytest.importorskip("onnxruntime")
    from luban.compress.export import export_onnx, parity
    from luban.compress.onnx_predictor import OrtModule
    from luban.config import validate
    from luban.models.speech import CTCModel
    from luban.tasks.speech import SpeechTask

    spec = SpeechTask(validate(speech_config(tmp_path, "x", tmp_path / "x.csv"))).export_spec()
    torch.manual_seed(0)
    model = CTCModel(24, 5, encoder=encoder, conv_channels=4, hidden_size=16, num_layers=2, nhead=2).eval()
    export_onnx(model, spec, (torch.randn(3, 41, 24), torch.tensor([41, 30, 9])), tmp_path / "m.onnx")
    batches = [(torch.randn(5, 90, 24), torch.tensor([90, 13, 44, 90, 7])), (torch.randn(1, 12, 24), torch.tensor([12]))]
    res = parity(model, OrtModule(tmp_path / "m.onnx", spec), batches)
    assert res["max_abs_diff"] < 1e-4 and res["rows"] == 6


@pytest.mark.parametrize("encoder", ["bigru", "conformer"])
def test_encoders_ignore_padding(encoder):
    from luban.models.speech import CTCModel

    torch.manual_seed(0)
    model = CTCModel(24, 5, encoder=encoder, conv_channels=4, hidden_size=16, num_layers=2, nhead=2).eval()
    x = torch.randn(1, 37, 24)
    padded = torch.cat([x, torch.zeros(1, 20, 24)], dim=1)
    with torch.no_grad():
        alone, n = model(x, torch.tensor([37]))
        batch, m = model(torch.cat([padded, torch.randn(1, 57, 24)]), torch.tensor([37, 57]))
    assert int(n[0]) == int(m[0]) == 10  # 37 frames -> 19 -> 10 after two stride-2 convolutions
    assert torch.allclose(alone[0, :10], batch[0, :10], atol=1e-5)
