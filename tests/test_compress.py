"""Export and compression: ONNX / TorchScript parity, the onnxruntime backend, int8 / bf16 quantization, pruning,
distillation, the benchmark table, and clear errors for what cannot be exported. Tiny models, a few seconds each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import luban
from luban.cli import main
from luban.errors import ExportError, LubanError, RunError
from tests.conftest import assert_no_run, text_config, write_csv, zh_sentences

pytest.importorskip("onnxruntime")


@pytest.fixture
def text_run(trained_text_run, tmp_path) -> Path:
    """A private copy of the shared trained text run (exports write into the run)."""
    return Path(shutil.copytree(trained_text_run["run"], tmp_path / "runs" / "zh"))


@pytest.fixture(scope="module")
def wide_text(tmp_path_factory) -> dict:
    """A text run whose weights dominate its file (so int8 visibly shrinks it), trained on an easy 好/差 set."""
    root = tmp_path_factory.mktemp("wide")
    rows = zh_sentences(130, seed=3)
    train, test = write_csv(root / "train.csv", rows[:200]), write_csv(root / "test.csv", rows[200:260])
    cfg = text_config(root / "runs", "wide", train, data={"test": str(test)},
                      model={"embedding_dim": 64, "num_filters": 96, "kernel_sizes": [2, 3]})
    return {"run": luban.train(cfg, quiet=True), "test": test, "root": root}


def _probs(rows):
    return torch.tensor([[r["probabilities"][k] for k in sorted(r["probabilities"])] for r in rows])


TEXTS = ["这个手机非常好", "那个酒店真差啊", "今天的服务特别好", "我的电脑十分差呢"]


def test_onnx_export_parity_and_backend(text_run, trained_text_run, capsys):
    torch_preds = luban.load(text_run).predict(TEXTS)
    assert main(["export", str(text_run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "parity on" in out and "max |Δ|" in out
    meta = json.loads((text_run / "model" / "onnx" / "export.json").read_text())
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["parity"]["rows"] > 0
    assert meta["dynamic_axes"] and meta["opset"] == 17
    p = luban.load(text_run)
    assert p.backend == "onnx"
    onnx_preds = p.predict(TEXTS)
    assert [r["label"] for r in onnx_preds] == [r["label"] for r in torch_preds]
    assert torch.allclose(_probs(onnx_preds), _probs(torch_preds), atol=1e-5)
    assert luban.load(text_run, backend="torch").backend == "torch"
    m = p.evaluate(trained_text_run["test"])  # same tokenization, same metrics as at training
    assert m["accuracy"] == trained_text_run["metrics"]["test"]["accuracy"]
    assert main(["predict", str(text_run), "--text", "这个手机非常好"]) == 0
    assert json.loads(capsys.readouterr().out)["label"] == "positive"


def test_torchscript_export(text_run):
    from luban.compress.export import export_run

    meta = export_run(text_run, "torchscript", quiet=True)
    assert meta["parity"]["max_abs_diff"] < 1e-5
    ts = torch.jit.load(str(text_run / "model" / "torchscript" / "model.pt"))
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    assert ts(ids, (ids != 0).long()).shape == (2, 2)
    assert luban.load(text_run).backend == "torch"  # only ONNX switches the backend


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory) -> Path:
    cfg = {"task": "image_classification", "seed": 1, "data": {"builtin": "digits", "train_limit": 600},
           "preprocessing": {"image": {"size": 8, "resize": 8, "grayscale": True,
                                       "augment": {"random_resized_crop": None, "hflip": False}}},
           "model": {"type": "resnet", "widths": [8, 16], "blocks": [1, 1]},
           "trainer": {"epochs": 2, "batch_size": 32, "lr": 0.01, "num_threads": 1, "device": "cpu",
                       "precision": "fp32"},
           "evaluation": {"baseline": False, "worst_examples": 0},
           "output": {"dir": str(tmp_path_factory.mktemp("digits") / "runs"), "name": "digits",
                      "tensorboard": False}}
    return luban.train(cfg, quiet=True)


def test_onnx_parity_tiny_cnn(digits_cnn):
    from luban.compress.export import export_run

    import sklearn.datasets

    images = [a / 16 for a in sklearn.datasets.load_digits().images[:12]]
    before = luban.load(digits_cnn).predict(images)
    meta = export_run(digits_cnn, "onnx", quiet=True)
    assert meta["parity"]["max_abs_diff"] < 1e-4
    p = luban.load(digits_cnn)
    assert p.backend == "onnx"
    after = p.predict(images)
    assert [r["label"] for r in after] == [r["label"] for r in before]
    assert max(abs(a["score"] - b["score"]) for a, b in zip(after, before, strict=True)) < 1e-4


def test_int8_dynamic_is_smaller_and_agrees(wide_text):
    from luban.compress.export import export_run
    from luban.compress.quantize import quantize_run

    run = wide_text["run"]
    export_run(run, "onnx", quiet=True)
    q = quantize_run(run, "int8-dynamic", quiet=True)
    assert q == run.parent / "wide-int8-dynamic"
    fp32_bytes = (run / "model" / "onnx" / "model.onnx").stat().st_size
    int8_bytes = (q / "model" / "onnx" / "model.onnx").stat().st_size
    assert int8_bytes < 0.5 * fp32_bytes
    assert not (q / "model" / "model.safetensors").exists()  # the new run holds only the int8 model
    fp32, int8 = luban.load(run), luban.load(q)
    assert int8.backend == "onnx"
    texts = [t for t, _ in zh_sentences(60, seed=9)]
    assert [r["label"] for r in int8.predict(texts)] == [r["label"] for r in fp32.predict(texts)]
    m = json.loads((q / "metrics.json").read_text())
    assert m["compression"]["method"] == "int8-dynamic" and m["compression"]["size_bytes"] < \
        m["compression"]["source_size_bytes"]
    assert m["test"]["accuracy"] == pytest.approx(int8.evaluate(wide_text["test"])["accuracy"])
    assert "Compression: int8-dynamic" in (q / "report.html").read_text()
    with pytest.raises(RunError, match="holds only an ONNX model"):
        luban.load(q, backend="torch")
    with pytest.raises(ExportError, match="only an ONNX model"):
        quantize_run(q, "int8-dynamic", quiet=True)


def test_int8_static_calibrates_and_excludes_nodes(text_run):
    from luban.compress.quantize import quantize_run

    with pytest.raises(ExportError, match="no node matches 'nope'"):
        quantize_run(text_run, "int8-static", exclude_nodes=["nope"], quiet=True)
    assert_no_run(text_run.parent, "zh-int8-static")
    q = quantize_run(text_run, "int8-static", exclude_nodes=["/head/*"], calibration_size=64, quiet=True)
    c = json.loads((q / "model" / "compression.json").read_text())
    assert c["calibration_rows"] == 64 and c["nodes_excluded"] and all("head" in n for n in c["nodes_excluded"])
    assert c["parity_vs_fp32"]["argmax_agreement"] >= 0.9
    assert luban.load(q).predict(["这个手机非常好"])[0]["label"] == "positive"


def test_bf16_halves_the_weights(text_run):
    from luban.compress.quantize import quantize_run

    q = quantize_run(text_run, "bf16", quiet=True)
    assert (q / "model" / "model.safetensors").stat().st_size < 0.6 * (text_run / "model" / "model.safetensors").stat().st_size
    p = luban.load(q)
    assert p.backend == "torch"
    assert [r["label"] for r in p.predict(TEXTS)] == ["positive", "negative", "positive", "negative"]


def test_pruning_reaches_the_asked_sparsity(text_run):
    from luban.compress.prune import apply_pruning, make_permanent, sparsity
    from luban.models.transformer import TransformerClassifier

    model = TransformerClassifier(50, 3, 16, d_model=16, nhead=2, num_layers=1, dim_feedforward=32)
    make_permanent(apply_pruning(model, 0.3))
    assert sparsity(model)["prunable_sparsity"] == pytest.approx(0.3, abs=0.002)
    layers = [model.head, model.encoder.layers[0].linear1, model.encoder.layers[0].linear2,
              model.encoder.layers[0].self_attn.out_proj]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros / sum(m.weight.numel() for m in layers) == pytest.approx(0.3, abs=0.002)  # global, over layers

    assert main(["compress", str(text_run), "--prune", "0.5", "--finetune-epochs", "1"]) == 0
    pruned = text_run.parent / "zh-pruned50"
    c = json.loads((pruned / "metrics.json").read_text())["compression"]
    assert c["sparsity"]["prunable_sparsity"] == pytest.approx(0.5, abs=0.002)
    assert len((pruned / "history.jsonl").read_text().splitlines()) == 1  # the fine-tune epoch
    reloaded = luban.load(pruned, backend="torch").task_predictor.model
    assert sparsity(reloaded)["prunable_sparsity"] == pytest.approx(0.5, abs=0.002)  # zeros survive the fine-tune

    from luban.compress.prune import prune_run

    s = prune_run(text_run, 0.25, structured=True, finetune_epochs=0, quiet=True)
    conv = luban.load(s).task_predictor.model.convs[0].weight
    assert int((conv.flatten(1).abs().sum(1) == 0).sum()) == round(0.25 * conv.shape[0])  # whole filters
    with pytest.raises(ExportError, match="0 < AMOUNT < 1"):
        prune_run(text_run, 1.5, quiet=True)


def test_distillation_loss_by_hand():
    import math

    from luban.compress.distill import distillation_loss

    s = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 3.0]])
    y = torch.tensor([0, 1])
    T, alpha = 2.0, 0.3

    def softmax(v):
        e = [math.exp(x) for x in v]
        return [x / sum(e) for x in e]

    kl = 0.0
    for si, ti in zip(s.tolist(), t.tolist(), strict=True):
        ps, pt = softmax([x / T for x in si]), softmax([x / T for x in ti])
        kl += sum(p * math.log(p / q) for p, q in zip(pt, ps, strict=True))
    kl /= 2
    ce = -(math.log(softmax(s[0].tolist())[0]) + math.log(softmax(s[1].tolist())[1])) / 2
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert float(distillation_loss(s, t, y, T, alpha)) == pytest.approx(expected, rel=1e-6)
    assert float(distillation_loss(t, t, y, T, 1.0)) == pytest.approx(0.0, abs=1e-7)  # student == teacher
    # transfer-set rows (label -100) only get the soft loss
    assert float(distillation_loss(s, t, torch.tensor([-100, -100]), T, alpha)) == pytest.approx(alpha * T * T * kl)


def test_distill_student_from_teacher(text_run, tmp_path):
    import yaml

    from luban.compress.distill import distill_run

    student = text_config(tmp_path, "student", "ignored.csv")
    student["model"] = {"type": "transformer", "d_model": 16, "nhead": 2, "num_layers": 1, "dim_feedforward": 32}
    path = tmp_path / "student.yaml"
    path.write_text(yaml.safe_dump(student), encoding="utf-8")
    out = distill_run(path, text_run, temperature=3.0, alpha=0.7, quiet=True)
    assert out == text_run.parent / "student-distilled"
    m = json.loads((out / "metrics.json").read_text())
    assert m["compression"]["method"] == "distill" and m["compression"]["temperature"] == 3.0
    assert m["data"]["splits"] == json.loads((text_run / "metrics.json").read_text())["data"]["splits"]
    assert "Distillation" in (out / "report.html").read_text()
    assert luban.load(out).predict(["这个手机非常好"])[0]["label"] in ("positive", "negative")
    extra = write_csv(tmp_path / "transfer.csv", [[t] for t, _ in zh_sentences(20, seed=5)], header=("text",))
    out2 = distill_run(path, text_run, name="with-transfer", transfer_data=extra, quiet=True)
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert m2["compression"]["transfer_rows"] == 40 and m2["data"]["splits"]["train"] == m["data"]["splits"]["train"] + 40
    tab = tmp_path / "tab.yaml"
    tab.write_text(yaml.safe_dump({"task": "tabular_classification", "data": {"builtin": "wine"}}))
    with pytest.raises(ExportError, match="differs from the teacher"):
        distill_run(tab, text_run, quiet=True)


def test_export_unsupported_task_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "runs" / "gan"
    (run / "model").mkdir(parents=True)
    (run / "config.yaml").write_text("task: image_generation\ndata: {builtin: digits}\n")
    (run / "metrics.json").write_text("{}")
    assert main(["export", str(run)]) == 2
    assert "export and compression are not supported for task image_generation" in capsys.readouterr().err
    assert main(["compress", str(run), "--quantize", "int8-dynamic"]) == 2
    assert "not supported for task image_generation" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "gan-int8-dynamic").exists()
    assert main(["compress", str(run)]) == 2
    assert "exactly one of" in capsys.readouterr().err


def test_export_unexportable_model_names_it(text_run):
    from luban.compress.export import export_onnx
    from luban.tasks.base import ExportSpec

    class Untraceable(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("cannot trace this")

    spec = ExportSpec(["x"], ["y"], {"x": {0: "batch"}})
    with pytest.raises(LubanError, match=r"Untraceable model cannot be exported to ONNX \(RuntimeError: cannot"):
        export_onnx(Untraceable(), spec, (torch.ones(2, 3),), text_run / "x.onnx")


def test_hf_backbone_export_save_pretrained_layout(out_dir, en_data, tiny_bert):
    from transformers import AutoModelForSequenceClassification

    from luban.compress.export import export_run

    cfg = text_config(out_dir, "bert", en_data["train"], data={"test": str(en_data["test"])},
                      preprocessing={"tokenizer": {"type": "pretrained", "max_length": 32}},
                      trainer={"epochs": 1, "lr": 1e-3})
    cfg["model"] = {"type": "pretrained", "path": str(tiny_bert)}
    run = luban.train(cfg, quiet=True)
    meta = export_run(run, "onnx", quiet=True)
    assert meta["parity"]["max_abs_diff"] < 1e-4 and meta["hf"] == "model/hf"
    hf = run / "model" / "hf"
    assert (hf / "config.json").is_file() and (hf / "modeling_luban.py").is_file()
    model = AutoModelForSequenceClassification.from_pretrained(str(hf), trust_remote_code=True).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    p = luban.load(run, backend="torch")
    enc = p.task_predictor.encoder.tok(["the hotel was very good", "my phone was bad"], padding=True,
                                       return_tensors="pt")
    with torch.no_grad():
        ours = p.task_predictor.model(enc["input_ids"], enc["attention_mask"])
        theirs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    import shutil

    shutil.rmtree(hf)
    again = export_run(run, "hf", quiet=True)  # the HF layout alone, no ONNX
    assert again["written"] and (hf / "config.json").is_file() and (hf / "modeling_luban.py").is_file()


def test_export_hf_for_a_model_without_that_layout_says_so(text_run):
    from luban.compress.export import export_run

    with pytest.raises(ExportError, match=r"this model \(\w+\) has no Hugging Face layout; .*--format onnx"):
        export_run(text_run, "hf", quiet=True)
    assert not (text_run / "model" / "hf").exists() and not (text_run / "model" / ".hf.tmp").exists()
    with pytest.raises(ExportError, match="--format embeddings is for recommendation runs"):
        export_run(text_run, "embeddings", quiet=True)


def test_benchmark_table_in_report(text_run, trained_text_run, capsys):
    from luban.compress.quantize import quantize_run

    q = quantize_run(text_run, "int8-dynamic", quiet=True)
    assert main(["benchmark", str(text_run), str(q), "--data", str(trained_text_run["test"]),
                 "--latency-rows", "5"]) == 0
    out = capsys.readouterr().out
    assert "zh-int8-dynamic" in out and "accuracy" in out and "rows/s" in out
    rows = json.loads((q / "benchmark.json").read_text())
    assert [r["name"] for r in rows] == ["zh", "zh-int8-dynamic"]
    assert rows[1]["backend"] == "onnx" and rows[0]["backend"] == "torch"
    assert rows[0]["score"] == pytest.approx(trained_text_run["metrics"]["test"]["accuracy"])
    for r in rows:
        assert r["latency_p50_ms"] > 0 and r["throughput"] > 0 and r["size_mb"] > 0
    report = (text_run / "report.html").read_text()
    assert report.count("<h2>Benchmark</h2>") == 1
    main(["benchmark", str(text_run), "--data", str(trained_text_run["test"]), "--latency-rows", "2"])
    assert (text_run / "report.html").read_text().count("<h2>Benchmark</h2>") == 1  # replaced, not appended
