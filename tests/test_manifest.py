"""The run directory's manifest.json (luban.manifest): written when a run finishes, read first when it loads."""

import hashlib
import json
import shutil

import pytest

import luban
from luban import manifest
from luban.processor import LEGACY
from luban.cli import main
from luban.errors import RunError

from conftest import tabular_config, write_csv


def to_format_0(run):
    """`run` rewritten as luban wrote runs before run formats: no manifest.json, and each part of processor.json
    in its own file of model/ (a tokenizer's in its folder), as the tasks used to save them."""
    (run / "manifest.json").unlink(missing_ok=True)
    model = run / "model"
    doc = json.loads((model / "processor.json").read_text(encoding="utf-8"))
    for name, state in doc["parts"].items():
        old = LEGACY[name]
        late = (name == "tokenizer" and state.get("type") == "ngram_bag") or \
            (name == "model" and doc["task"] == "text_generation")
        (model / old[late]).write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
    (model / "processor.json").unlink()


def test_a_finished_run_has_a_manifest_of_its_files(trained_text_run):
    run = trained_text_run["run"]
    m = json.loads((run / "manifest.json").read_text(encoding="utf-8"))
    assert m["format"] == manifest.FORMAT == 1
    assert m["luban_version"] == luban.__version__
    assert (m["task"], m["model_type"], m["seed"]) == ("text_classification", "textcnn", 7)
    assert m["created"].endswith("+00:00")
    files = {f["path"]: f for f in m["files"]}
    on_disk = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file())
    assert sorted(files) == [p for p in on_disk if p != "manifest.json"]
    weights = run / "model" / "model.safetensors"
    assert files["model/model.safetensors"]["bytes"] == weights.stat().st_size
    assert files["model/model.safetensors"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "sha256" not in files["metrics.json"]  # only the model's files are hashed
    assert "model/processor.json" in files


def test_a_run_without_manifest_loads_as_format_0(trained_text_run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(trained_text_run["run"], old)
    (old / "manifest.json").unlink()  # a run written by luban before run formats
    assert manifest.read(old) == {"format": 0}
    texts = ["服务很好，非常满意", "太差了"]
    assert luban.load(old).predict(texts) == luban.load(trained_text_run["run"]).predict(texts)
    to_format_0(old)  # and with its fitted state in the old per-part files
    assert (old / "model" / "labels.json").is_file() and (old / "model" / "tokenizer" / "encoder.json").is_file()
    assert luban.load(old).predict(texts) == luban.load(trained_text_run["run"]).predict(texts)
    (old / "model" / "labels.json").unlink()
    with pytest.raises(RunError, match="labels.json.*no 'labels'"):
        luban.load(old)


def test_a_tabular_run_of_format_0_predicts_as_before(tmp_path):
    rows = [[str(a), str(b), "big" if a + b > 10 else "small"] for a in range(11) for b in range(11)]
    train = write_csv(tmp_path / "t.csv", rows, header=("a", "b", "size"))
    run = luban.train(tabular_config(tmp_path / "runs", "tab", "tabular_classification",
                                     {"train": str(train), "columns": {"label": "size"}},
                                     trainer={"epochs": 2}), quiet=True)
    old = tmp_path / "old"
    shutil.copytree(run, old)
    to_format_0(old)
    assert sorted(p.name for p in (old / "model").glob("*.json")) == ["labels.json", "preprocessing.json"]
    inputs = [{"a": 0, "b": 1}, {"a": 10, "b": 9}]
    assert luban.load(old).predict(inputs) == luban.load(run).predict(inputs)


def test_a_run_of_a_newer_format_is_refused_with_one_clear_error(trained_text_run, tmp_path, capsys):
    new = tmp_path / "new"
    shutil.copytree(trained_text_run["run"], new)
    m = json.loads((new / "manifest.json").read_text(encoding="utf-8"))
    m.update(format=manifest.FORMAT + 1, luban_version="9.0.0")
    (new / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    msg = f"{new} was written by luban 9.0.0 with run format {manifest.FORMAT + 1}; this luban reads up to " \
          f"{manifest.FORMAT}: upgrade luban"
    with pytest.raises(RunError) as e:
        luban.load(new)
    assert str(e.value) == msg
    assert main(["predict", str(new), "--text", "好"]) != 0
    err = capsys.readouterr().err
    assert err.strip() == f"error: {msg}" and "Traceback" not in err
    (new / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RunError, match="unreadable run manifest"):
        luban.load(new)


def test_refresh_lists_files_added_to_a_finished_run(trained_text_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_text_run["run"], run)
    before = manifest.read(run)
    (run / "model" / "onnx").mkdir()
    (run / "model" / "onnx" / "model.onnx").write_bytes(b"graph")  # what `luban export` adds
    manifest.refresh(run)
    after = manifest.read(run)
    added = {f["path"]: f for f in after["files"]}["model/onnx/model.onnx"]
    assert added == {"path": "model/onnx/model.onnx", "bytes": 5, "sha256": hashlib.sha256(b"graph").hexdigest()}
    assert {k: v for k, v in after.items() if k != "files"} == {k: v for k, v in before.items() if k != "files"}


def test_processor_json_names_its_assets_and_refuses_a_newer_format(trained_text_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_text_run["run"], run)
    path = run / "model" / "processor.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["format"] == 1 and doc["task"] == "text_classification"
    assert doc["assets"] == ["tokenizer/vocab.json"] and doc["parts"]["tokenizer"]["type"] == "char"
    assert doc["parts"]["labels"] == trained_text_run["metrics"]["data"]["labels"]
    doc["format"] = 2
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RunError, match="processor format 2; this luban reads up to 1: upgrade luban"):
        luban.load(run)
