"""One test per kind of bad input: a clear LubanError naming file and line/field, and no run dir left behind."""

import json
import shutil

import pytest

import luban
from luban.errors import ConfigError, DataError, LubanError, RunError

from conftest import assert_no_run, tabular_config, text_config, write_csv, zh_sentences

NAME = "bad"


def train_fails(cfg, out_dir, exc=DataError):
    with pytest.raises(exc) as e:
        luban.train(cfg, quiet=True)
    assert isinstance(e.value, LubanError)
    assert_no_run(out_dir, cfg["output"]["name"])
    return str(e.value)


def test_missing_file(out_dir, tmp_path):
    missing = tmp_path / "nope.csv"
    msg = train_fails(text_config(out_dir, NAME, missing), out_dir)
    assert str(missing) in msg and "file not found" in msg


def test_missing_test_file(out_dir, zh_data, tmp_path):
    missing = tmp_path / "no_test.csv"
    msg = train_fails(text_config(out_dir, NAME, zh_data["train"], data={"test": str(missing)}), out_dir)
    assert str(missing) in msg and "file not found" in msg


def test_missing_column(out_dir, zh_data):
    cfg = text_config(out_dir, NAME, zh_data["train"], data={"columns": {"text": "review"}})
    msg = train_fails(cfg, out_dir)
    assert str(zh_data["train"]) in msg
    assert "data.columns.text" in msg and "'review' not found" in msg and "text, label" in msg


def test_column_index_out_of_range(out_dir, tmp_path):
    f = write_csv(tmp_path / "nohead.csv", zh_sentences(50), header=None)
    cfg = text_config(out_dir, NAME, f, data={"header": False, "columns": {"text": 0, "label": 5}})
    msg = train_fails(cfg, out_dir)
    assert str(f) in msg and "data.columns.label" in msg and "out of range" in msg


def test_header_less_file_by_column_index_trains(out_dir, tmp_path):
    f = write_csv(tmp_path / "nohead.csv", zh_sentences(60), header=None)
    cfg = text_config(out_dir, "idx", f, data={"header": False, "columns": {"text": 0, "label": 1}},
                      trainer={"epochs": 1})
    run = luban.train(cfg, quiet=True)
    assert json.loads((run / "metrics.json").read_text())["data"]["labels"] == ["negative", "positive"]


def test_ragged_csv_row(out_dir, tmp_path):
    rows = zh_sentences(50)
    f = write_csv(tmp_path / "ragged.csv", rows)
    lines = f.read_text(encoding="utf-8").splitlines()
    lines[6] = lines[6] + ",extra"  # line 7 of the file
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "line 7" in msg and "expected 2 fields, found 3" in msg


def test_malformed_quoting(out_dir, tmp_path):
    f = tmp_path / "quotes.csv"
    f.write_text('text,label\n"这个很好,positive\n', encoding="utf-8")
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "line" in msg and "malformed CSV" in msg


def test_non_utf8_bytes(out_dir, tmp_path):
    f = write_csv(tmp_path / "gbk.csv", zh_sentences(50))
    raw = f.read_bytes().split(b"\n")
    raw[4] = "这个价格很好啊".encode("gbk") + b",positive"  # line 5 in GBK
    f.write_bytes(b"\n".join(raw))
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "line 5" in msg and "not valid utf-8" in msg and "data.encoding" in msg


def test_unknown_encoding_is_a_clear_error(out_dir, zh_data):
    msg = train_fails(text_config(out_dir, NAME, zh_data["train"], data={"encoding": "klingon-8"}), out_dir)
    assert "data.encoding" in msg and "klingon-8" in msg


def test_bad_jsonl_line(out_dir, tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "很好", "label": "positive"}\n{"text": "差", "label"\n', encoding="utf-8")
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "line 2" in msg and "not valid JSON" in msg


def test_jsonl_non_text_field(out_dir, tmp_path):
    from conftest import write_jsonl

    recs = [{"text": t, "label": l} for t, l in zh_sentences(30)]
    recs[3]["text"] = 42
    f = write_jsonl(tmp_path / "d.jsonl", recs)
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "line 4" in msg and "field 'text'" in msg and "expected text" in msg


def test_unknown_file_extension(out_dir, tmp_path):
    f = tmp_path / "data.xlsx"
    f.write_text("x", encoding="utf-8")
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "data.format" in msg


def test_empty_file(out_dir, tmp_path):
    f = tmp_path / "empty.csv"
    f.write_text("text,label\n", encoding="utf-8")
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "no data rows" in msg


def _with_empty_text(tmp_path):
    rows = zh_sentences(50)
    rows[9] = ("   ", "positive")  # file line 11 (header is line 1)
    return write_csv(tmp_path / "empty_text.csv", rows)


def test_empty_text_is_an_error_when_not_dropping(out_dir, tmp_path):
    f = _with_empty_text(tmp_path)
    cfg = text_config(out_dir, NAME, f, data={"clean": {"drop_empty": False}})
    msg = train_fails(cfg, out_dir)
    assert str(f) in msg and "line 11" in msg and "field 'text'" in msg and "empty text" in msg


def test_empty_text_is_dropped_by_default(out_dir, tmp_path):
    f = _with_empty_text(tmp_path)
    run = luban.train(text_config(out_dir, "dropped", f, trainer={"epochs": 1}), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    train_clean = next(c for c in m["data"]["cleaning"] if c["split"] == "train")
    assert train_clean["rows_in"] == 100 and train_clean["rows_out"] == 99
    assert train_clean["dropped"] == {"empty text": 1}
    assert sum(m["data"]["splits"].values()) == 99


def test_missing_label_when_not_dropping(out_dir, tmp_path):
    rows = zh_sentences(50)
    rows[2] = (rows[2][0], "")
    f = write_csv(tmp_path / "nolabel.csv", rows)
    msg = train_fails(text_config(out_dir, NAME, f, data={"clean": {"drop_missing_label": False}}), out_dir)
    assert str(f) in msg and "line 4" in msg and "field 'label'" in msg and "missing label" in msg


def test_duplicates_and_conflicts_are_dropped(out_dir, tmp_path):
    rows = zh_sentences(50)
    rows += [rows[0], (rows[1][0], "negative" if rows[1][1] == "positive" else "positive")]
    f = write_csv(tmp_path / "dups.csv", rows)
    run = luban.train(text_config(out_dir, "dups", f, trainer={"epochs": 1}), quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    c = m["data"]["cleaning"][0]
    assert c["dropped"] == {"texts seen with conflicting labels": 2, "exact duplicates": 1}
    assert c["rows_out"] == 99


def test_single_class_training_set(out_dir, tmp_path):
    rows = [(t, "positive") for t, _ in zh_sentences(30)]
    f = write_csv(tmp_path / "one.csv", rows)
    msg = train_fails(text_config(out_dir, NAME, f), out_dir)
    assert str(f) in msg and "field 'label'" in msg and "single class" in msg and "positive" in msg


def test_single_class_tabular(out_dir, tmp_path):
    f = write_csv(tmp_path / "one.csv", [[str(i), "a"] for i in range(30)], header=("x", "y"))
    cfg = tabular_config(out_dir, NAME, "tabular_classification", {"train": str(f), "columns": {"label": "y"}})
    msg = train_fails(cfg, out_dir)
    assert str(f) in msg and "field 'y'" in msg and "single class" in msg


def test_label_unseen_in_training_given_test_file(out_dir, zh_data, tmp_path):
    rows = zh_sentences(20, seed=5)
    rows[3] = (rows[3][0], "neutral")
    test = write_csv(tmp_path / "test_new.csv", rows)
    msg = train_fails(text_config(out_dir, NAME, zh_data["train"], data={"test": str(test)}), out_dir)
    assert str(test) in msg and "line 5" in msg and "'neutral' was not seen in training" in msg


def test_label_unseen_in_training_at_evaluation(trained_text_run, tmp_path):
    rows = zh_sentences(20, seed=5)
    rows[6] = (rows[6][0], "neutral")
    f = write_csv(tmp_path / "eval_new.csv", rows)
    with pytest.raises(DataError) as e:
        luban.load(trained_text_run["run"]).evaluate(f)
    msg = str(e.value)
    assert str(f) in msg and "line 8" in msg and "field 'label'" in msg and "'neutral' was not seen" in msg


def test_tabular_non_numeric_value(out_dir, tmp_path):
    rows = [[str(i), str(i % 3), "a" if i % 2 else "b"] for i in range(40)]
    rows[10][1] = "many"
    f = write_csv(tmp_path / "t.csv", rows, header=("x", "z", "y"))
    cfg = tabular_config(out_dir, NAME, "tabular_classification", {"train": str(f), "columns": {"label": "y"}})
    msg = train_fails(cfg, out_dir)
    assert str(f) in msg and "line 12" in msg and "field 'z'" in msg and "not a number" in msg


def test_tabular_regression_non_numeric_target(out_dir, tmp_path):
    rows = [[str(i), str(2 * i)] for i in range(40)]
    rows[20][1] = "lots"
    f = write_csv(tmp_path / "t.csv", rows, header=("x", "y"))
    cfg = tabular_config(out_dir, NAME, "tabular_regression", {"train": str(f), "columns": {"label": "y"}})
    msg = train_fails(cfg, out_dir)
    assert str(f) in msg and "field 'y'" in msg and "'lots' is not a number" in msg


def test_wrong_config_type(out_dir, zh_data):
    msg = train_fails(text_config(out_dir, NAME, zh_data["train"], trainer={"epochs": "abc"}), out_dir, ConfigError)
    assert "trainer.epochs" in msg


def test_unknown_config_key(out_dir, zh_data):
    msg = train_fails(text_config(out_dir, NAME, zh_data["train"], trainer={"lrr": 0.1}), out_dir, ConfigError)
    assert "trainer.lrr" in msg and "unknown key" in msg


def test_unknown_builtin_dataset(out_dir):
    cfg = tabular_config(out_dir, NAME, "tabular_classification", {"builtin": "iris_xl"})
    msg = train_fails(cfg, out_dir)
    assert "data.builtin" in msg and "iris_xl" in msg and "wine" in msg


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_corrupted_checkpoint(trained_text_run, tmp_path, damage):
    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    weights = run / "model" / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "garbage":
        weights.write_bytes(b"\x00not a safetensors file" * 10)
    else:
        weights.unlink()
    with pytest.raises(RunError) as e:
        luban.load(run)
    assert str(weights) in str(e.value)


def test_checkpoint_from_another_model(trained_text_run, tmp_path):
    """Weights that load but do not fit the configured model are a RunError, not a torch traceback."""
    from safetensors.torch import load_file, save_file

    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    weights = run / "model" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["extra.weight"] = tensors.pop("head.weight")
    save_file(tensors, str(weights))
    with pytest.raises(RunError, match="does not match the model"):
        luban.load(run)


def test_corrupted_config_in_run_dir(trained_text_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    (run / "config.yaml").write_text("task: [oops\n", encoding="utf-8")
    with pytest.raises(LubanError, match="config.yaml"):
        luban.load(run)


def test_corrupted_tokenizer_in_run_dir(trained_text_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    path = run / "model" / "processor.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["parts"]["tokenizer"]["config"] = "{not json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RunError, match="tokenizer files are missing or corrupted"):
        luban.load(run)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(RunError, match="processor.json: unreadable"):
        luban.load(run)


def _load_without(trained_text_run, tmp_path, relpath):
    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    (run / relpath).unlink()
    with pytest.raises(RunError) as e:
        luban.load(run)
    return str(e.value)


def test_run_dir_missing_tokenizer_vocab(trained_text_run, tmp_path):
    msg = _load_without(trained_text_run, tmp_path, "model/tokenizer/vocab.json")
    assert "tokenizer" in msg and "vocab.json" in msg


def _load_without_part(trained_text_run, tmp_path, part):
    run = tmp_path / "copy"
    shutil.copytree(trained_text_run["run"], run)
    path = run / "model" / "processor.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    del doc["parts"][part]
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(RunError) as e:
        luban.load(run)
    return str(e.value)


def test_run_dir_missing_model_meta(trained_text_run, tmp_path):
    msg = _load_without_part(trained_text_run, tmp_path, "model")
    assert "processor.json" in msg and "'model'" in msg
    assert "processor.json" in _load_without(trained_text_run, tmp_path / "whole", "model/processor.json")


def test_run_dir_missing_labels(trained_text_run, tmp_path):
    msg = _load_without_part(trained_text_run, tmp_path, "labels")
    assert "processor.json" in msg and "'labels'" in msg
