"""Config loading: errors name the YAML path, --set overrides, render shows every default."""

from pathlib import Path

import pytest
import yaml

import luban
from luban.config import TASK_CONFIGS, apply_overrides, load_config, render, validate
from luban.errors import ConfigError

from conftest import assert_no_run, text_config


def write_yaml(path: Path, tree: dict) -> Path:
    path.write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    return path


COLUMNS = {"text": "text", "label": "label"}
MINIMAL = {"task": "text_classification", "data": {"train": "train.csv", "columns": COLUMNS}}


def cfg_with(**sections) -> dict:
    tree = {"task": "text_classification", "data": {"train": "train.csv", "columns": COLUMNS}}
    tree.update(sections)
    return tree


def test_unknown_key_names_yaml_path_and_suggests(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", cfg_with(trainer={"lrr": 0.1}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "trainer.lrr" in msg and "unknown key" in msg
    assert "did you mean 'lr'" in msg
    assert str(path) in msg


def test_unknown_nested_key_names_full_path():
    with pytest.raises(ConfigError, match=r"data\.clean\.drop_emtpy: unknown key"):
        validate(cfg_with(data={"train": "t.csv", "clean": {"drop_emtpy": True}}))


def test_unknown_top_level_section():
    with pytest.raises(ConfigError, match=r"trainr: unknown key \(did you mean 'trainer'\?\)"):
        validate(cfg_with(trainr={"epochs": 1}))


def test_unknown_model_key_has_no_discriminator_in_path():
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(model={"type": "textcnn", "embeding_dim": 8}))
    assert "model.embeding_dim: unknown key" in str(e.value)
    assert "did you mean 'embedding_dim'" in str(e.value)


def test_wrong_type_names_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", cfg_with(trainer={"epochs": "abc"}))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert "trainer.epochs:" in str(e.value)
    assert "'abc'" in str(e.value)


def test_bad_value_names_path_and_bound():
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(trainer={"lr": -1}))
    assert "trainer.lr: must be > 0" in str(e.value)


def test_bad_literal_lists_choices():
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(trainer={"optimizer": "adamax"}))
    assert "trainer.optimizer: must be one of" in str(e.value)
    assert "adamw" in str(e.value)


def test_unknown_model_type():
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(model={"type": "lstm_magic"}))
    msg = str(e.value)
    assert "model" in msg and "unknown model type 'lstm_magic'" in msg
    assert "textcnn" in msg


def test_missing_task_and_data_are_required():
    with pytest.raises(ConfigError) as e:
        validate({})
    assert "task: required" in str(e.value)
    assert "data: required" in str(e.value)


def test_model_must_fit_task():
    with pytest.raises(ConfigError, match="does not fit task text_classification"):
        validate(cfg_with(model={"type": "mlp"}))
    with pytest.raises(ConfigError, match="does not fit task tabular_regression"):
        validate({"task": "tabular_regression", "data": {"builtin": "diabetes"}, "model": {"type": "textcnn"}})


def test_data_needs_exactly_one_source():
    with pytest.raises(ConfigError, match="give either data.builtin or data.train"):
        validate({"task": "text_classification", "data": {}})
    with pytest.raises(ConfigError, match="not both"):
        validate({"task": "text_classification", "data": {"builtin": "wine", "train": "x.csv"}})


def test_transformer_heads_must_divide():
    with pytest.raises(ConfigError, match="divisible"):
        validate(cfg_with(model={"type": "transformer", "d_model": 30, "nhead": 4}))


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(lst)


def test_set_override_works(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", cfg_with(trainer={"epochs": 10}))
    cfg = load_config(path, ["trainer.epochs=3", "trainer.lr=0.5", "model.type=rnn", "data.clean.lowercase=true",
                             ])
    assert cfg.trainer.epochs == 3 and isinstance(cfg.trainer.epochs, int)
    assert cfg.trainer.lr == 0.5
    assert cfg.model.type == "rnn"
    assert cfg.data.clean.lowercase is True
    assert cfg.output.name == "c"  # default: the config file's stem


def test_set_override_parses_yaml_values():
    tree = apply_overrides({}, ["model.kernel_sizes=[1, 2]", "output.name=run one", "a.b=null"])
    assert tree == {"model": {"kernel_sizes": [1, 2]}, "output": {"name": "run one"}, "a": {"b": None}}


def test_set_override_errors():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["trainer.epochs"])
    with pytest.raises(ConfigError, match="trainer is not a section"):
        apply_overrides({"trainer": 3}, ["trainer.epochs=3"])


def test_set_override_bad_value_names_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    with pytest.raises(ConfigError, match=r"trainer\.epochs: must be > 0"):
        load_config(path, ["trainer.epochs=0"])


def test_relative_data_paths_resolve_against_config_folder(tmp_path):
    sub = tmp_path / "proj"
    sub.mkdir()
    (sub / "train.csv").write_text("text,label\n", encoding="utf-8")
    cfg = load_config(write_yaml(sub / "c.yaml", MINIMAL))
    assert cfg.data.train == sub / "train.csv"


def _all_keys(tree: dict, prefix=""):
    for k, v in tree.items():
        yield prefix + k
        if isinstance(v, dict):
            yield from _all_keys(v, prefix + k + ".")


def test_render_prints_every_default(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    out = yaml.safe_load(render(load_config(path)))
    assert out["trainer"]["epochs"] == 10
    assert out["trainer"]["lr"] == 0.001
    assert out["trainer"]["optimizer"] == "adamw"
    # early stopping is on by default for a supervised task: patience max(3, epochs / 5)
    assert out["trainer"]["early_stopping"] == {"metric": None, "mode": "auto", "patience": 3}
    assert out["model"]["type"] == "textcnn" and out["model"]["embedding_dim"] == 128
    assert out["preprocessing"]["tokenizer"]["type"] == "char"
    assert out["data"]["clean"]["drop_empty"] is True
    assert out["data"]["split"] == {"validation": 0.1, "test": 0.1, "stratify": True, "seed": None}
    assert out["evaluation"] == {"baseline": True, "worst_examples": 20, "slices": [], "sensitive": None}
    assert out["output"]["name"] == "c"
    # every field of every section is present
    expected = set()

    def walk(model, prefix):
        for name, field in model.model_fields.items():
            expected.add(prefix + name)
            ann = field.annotation
            sub = next((a for a in getattr(ann, "__args__", (ann,)) if hasattr(a, "model_fields")), None)
            if sub is not None and name != "model" and field.default is not None:  # optional sections stay null
                walk(sub, prefix + name + ".")

    walk(TASK_CONFIGS["text_classification"], "")
    # all but what cannot take effect: workers of a run that is not distributed, an MLflow experiment without MLflow,
    # the momentum of an AdamW run, how to redact when nothing is redacted
    not_in_effect = {"search", "tracking.experiment", "trainer.momentum", "data.clean.redact_style",
                     "data.clean.redact_ner"} | {f"trainer.distributed.{k}" for k in
                                                 ("workers", "address", "cpus_per_worker", "use_gpu")}
    assert expected - not_in_effect <= set(_all_keys(out))
    # and the rendered YAML validates back to the same config
    assert validate(out).model_dump() == load_config(path).model_dump()


def test_cli_config_render_prints_defaults_and_applies_set(tmp_path, capsys):
    from luban.cli import main

    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    assert main(["config", "render", str(path), "--set", "trainer.epochs=3"]) == 0
    out = yaml.safe_load(capsys.readouterr().out)
    assert out["trainer"]["epochs"] == 3
    assert out["trainer"]["batch_size"] == 32
    assert out["model"]["kernel_sizes"] == [2, 3, 4]
    assert out["preprocessing"]["tokenizer"]["type"] == "char"


def test_cli_config_render_error(tmp_path, capsys):
    from luban.cli import main

    path = write_yaml(tmp_path / "c.yaml", cfg_with(trainer={"lrr": 1}))
    assert main(["config", "render", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "trainer.lrr: unknown key" in err


@pytest.mark.parametrize("bad, expect", [
    ({"trainer": {"lrr": 0.1}}, "trainer.lrr: unknown key"),
    ({"trainer": {"epochs": "abc"}}, "trainer.epochs:"),
    ({"trainer": {"lr": -1}}, "trainer.lr: must be > 0"),
    ({"model": {"type": "nope"}}, "unknown model type 'nope'"),
])
def test_train_with_bad_config_leaves_no_run(tmp_path, zh_data, bad, expect):
    out = tmp_path / "runs"
    cfg = text_config(out, "bad", zh_data["train"], **bad)
    with pytest.raises(ConfigError) as e:
        luban.train(cfg, quiet=True)
    assert expect in str(e.value)
    assert_no_run(out, "bad")
    assert not out.exists() or not any(out.iterdir())


def test_train_set_override_applies(tmp_path, zh_data):
    import json

    out = tmp_path / "runs"
    cfg_path = write_yaml(tmp_path / "ovr.yaml", text_config(out, "ovr", zh_data["train"],
                                                              trainer={"epochs": 5}))
    run = luban.train(cfg_path, ["trainer.epochs=1"], quiet=True)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["epochs_run"] == 1
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["trainer"]["epochs"] == 1


def test_train_overrides_do_not_mutate_callers_dict(tmp_path, zh_data):
    import copy

    cfg = text_config(tmp_path / "runs", "keep", zh_data["train"], trainer={"epochs": 2})
    before = copy.deepcopy(cfg)
    luban.train(cfg, ["trainer.epochs=1"], quiet=True)
    assert cfg == before


def test_unknown_early_stopping_metric_is_a_config_error(tmp_path, zh_data):
    cfg = text_config(tmp_path / "runs", "es", zh_data["train"],
                      trainer={"early_stopping": {"metric": "acuracy", "patience": 1}})
    with pytest.raises(ConfigError) as e:
        luban.train(cfg, quiet=True)
    msg = str(e.value)
    assert "trainer.early_stopping.metric: unknown validation metric 'acuracy'" in msg
    assert "did you mean 'accuracy'" in msg and "(top level)" not in msg
    assert_no_run(tmp_path / "runs", "es")
    with pytest.raises(ConfigError, match="unknown validation metric 'accuracy' for task tabular_regression"):
        validate({"task": "tabular_regression", "data": {"builtin": "diabetes"},
                  "trainer": {"early_stopping": {"metric": "accuracy"}}})


def test_early_stopping_on_another_metric(tmp_path, zh_data):
    import json

    cfg = text_config(tmp_path / "runs", "es2", zh_data["train"], model={"dropout": 0.0},
                      trainer={"epochs": 6, "early_stopping": {"metric": "f1_macro", "patience": 1}})
    m = json.loads((luban.train(cfg, quiet=True) / "metrics.json").read_text(encoding="utf-8"))
    # validation reaches f1 1.0 within a few epochs; one epoch without improvement then stops the run
    assert m["stopped_early"] is True
    assert m["epochs_run"] == m["best_epoch"] + 1 < 6


# ----------------------------------------------------------------------------------------------- per-task schemas


def test_a_key_of_another_task_fails_with_its_path_and_the_allowed_keys():
    with pytest.raises(ConfigError) as e:
        validate(cfg_with(data={"train": "t.csv", "columns": {**COLUMNS, "audio": "wav"}}))
    assert "data.columns.audio: not a setting of task text_classification; allowed: id, label, text" in str(e.value)
    with pytest.raises(ConfigError, match=r"recommendation: not a setting of task text_classification"):
        validate(cfg_with(recommendation={"k": 5}))
    with pytest.raises(ConfigError, match=r"preprocessing.image: not a setting of task text_classification"):
        validate(cfg_with(preprocessing={"image": {"size": 64}}))
    # a typo still gets its hint
    with pytest.raises(ConfigError, match=r"data.columns.txt: unknown key \(did you mean 'text'\?\)"):
        validate(cfg_with(data={"train": "t.csv", "columns": {"txt": "text"}}))


def test_config_render_rejects_what_train_rejects(tmp_path, capsys):
    from luban.cli import main

    path = write_yaml(tmp_path / "c.yaml", {"task": "text_classification",
                                            "data": {"train": "t.csv", "columns": {"label": "label"}}})
    assert main(["config", "render", str(path)]) == 2
    assert "text classification needs data.columns.text and data.columns.label" in capsys.readouterr().err
    path = write_yaml(tmp_path / "d.yaml", cfg_with(data={"train": "t.csv", "columns": {**COLUMNS, "user": "u"}}))
    assert main(["config", "render", str(path)]) == 2
    assert "data.columns.user: not a setting of task text_classification" in capsys.readouterr().err


def test_demo_render_prints_only_what_the_run_uses():
    def leaves(x):
        return sum(leaves(v) for v in x.values()) if isinstance(x, dict) else 1

    root = Path(__file__).resolve().parents[1]
    out = yaml.safe_load(render(load_config(root / "examples" / "demo_zh_sentiment.yaml")))
    assert leaves(out) <= 80
    assert "recommendation" not in out and "generation" not in out and "tagging" not in out
    assert set(out["data"]["columns"]) == {"text", "label", "id"}
    assert out["data"]["columns"]["text"] == "text"  # the built-in dataset's columns, filled in by validation


def test_old_flat_run_config_still_loads():
    """A run dir's config.yaml written by the flat schema holds every task's settings at their defaults: they are
    dropped; a foreign setting that is not at its default is an error."""
    tree = yaml.safe_load((Path(__file__).parent / "fixtures" / "flat_config_text_classification.yaml").read_text())
    assert tree["recommendation"]["k"] == 10 and tree["data"]["columns"]["audio"] is None
    cfg = validate(tree)
    assert cfg.model.type == "textcnn" and cfg.model.embedding_dim == 16 and cfg.trainer.epochs == 2
    assert not hasattr(cfg, "recommendation") and "audio" not in type(cfg.data.columns).model_fields
    tree["recommendation"]["k"] = 5
    with pytest.raises(ConfigError, match=r"recommendation: not a setting of task text_classification"):
        validate(tree)


def test_pretrained_model_sets_its_tokenizer_in_validation():
    cfg = validate(cfg_with(model={"type": "pretrained", "path": "some/folder"}))
    assert cfg.preprocessing.tokenizer.type == "pretrained"
    with pytest.raises(ConfigError, match="preprocessing.tokenizer.type: a pretrained model needs its own"):
        validate(cfg_with(model={"type": "pretrained", "path": "x"}, preprocessing={"tokenizer": {"type": "char"}}))


@pytest.mark.parametrize("tree, expect", [
    ({"task": "token_classification", "data": {"train": "t.jsonl", "columns": {"tokens": "tokens"}}},
     "token classification needs data.columns.tokens and data.columns.tags"),
    ({"task": "translation", "data": {"train": "t.csv", "columns": {"source": "en"}}},
     "translation needs data.columns.source and data.columns.target"),
    ({"task": "tabular_classification", "data": {"train": "t.csv", "columns": {"label": "y", "features": ["y"]}}},
     "data.columns.features: the label column 'y' cannot also be a feature"),
    ({"task": "text_generation", "data": {"train": "t.jsonl", "columns": {"prompt": "p"}}},
     "data.columns: supervised fine-tuning needs both prompt and response"),
    ({"task": "text_generation", "data": {"train": "t.jsonl", "columns": {"prompt": "p", "chosen": "c"}}},
     "data.columns: preference training needs both chosen and rejected"),
    ({"task": "text_generation", "data": {"train": "t.jsonl", "columns": {"prompt": "p", "chosen": "c",
                                                                        "rejected": "r"}}},
     "model: preference training starts from a pretrained causal LM"),
    ({"task": "recommendation", "data": {"builtin": "wine"}}, "data.builtin: recommendation reads interactions"),
    ({"task": "recommendation", "data": {"train": "r.csv"}, "model": {"type": "mf_explicit"},
      "recommendation": {"feedback": "implicit"}}, "recommendation.feedback: mf_explicit predicts ratings"),
    ({"task": "image_classification", "data": {"train": "imgs"}, "preprocessing": {"image": {"size": 64,
                                                                                             "resize": 32}}},
     "preprocessing.image.resize (32) must be >= size (64)"),
])
def test_schema_level_checks_fail_at_validation(tree, expect):
    with pytest.raises(ConfigError) as e:
        validate(tree)
    assert expect in str(e.value)


def test_config_schema_prints_json_schema(capsys):
    import json

    from luban.cli import main

    assert main(["config", "schema", "--task", "recommendation"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["properties"]["task"]["const"] == "recommendation"
    assert "recommendation" in schema["properties"] and "generation" not in schema["properties"]
    assert main(["config", "schema", "--task", "nope"]) == 2


def test_a_validated_config_is_frozen_and_updated_validates_a_copy(tmp_path):
    from pydantic import ValidationError

    from luban.config import updated

    cfg = load_config(write_yaml(tmp_path / "c.yaml", MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        cfg.trainer.lr = 0.5
    with pytest.raises(ValidationError, match="frozen"):
        cfg.output.name = "other"
    with pytest.raises(ValidationError, match="frozen"):
        cfg.data.encoding = "gbk"  # data settings too: `luban evaluate --set data.*` makes a validated copy
    new = updated(cfg, {"trainer.lr": 0.5, "output.dir": tmp_path / "runs"})
    assert new.trainer.lr == 0.5 and new.output.dir == tmp_path / "runs" and new.output.name == "c"
    assert cfg.trainer.lr == 0.001  # the original is untouched
    with pytest.raises(ConfigError, match=r"trainer\.lr: must be > 0"):
        updated(cfg, {"trainer.lr": -1})


def test_a_run_dir_saved_by_the_flat_schema_still_loads_and_predicts(tmp_path, trained_text_run):
    """A run's config.yaml with every other task's settings at their defaults (as the flat schema wrote them)."""
    import shutil

    flat = yaml.safe_load((Path(__file__).parent / "fixtures" / "flat_config_text_classification.yaml").read_text())
    run = shutil.copytree(trained_text_run["run"], tmp_path / "old")
    tree = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    for key in ("generation", "recommendation", "tagging"):
        tree[key] = flat[key]
    tree["data"] = {**flat["data"], **{k: v for k, v in tree["data"].items() if k != "columns"},
                    "columns": {**flat["data"]["columns"], **tree["data"]["columns"]}}
    tree["preprocessing"] = {**flat["preprocessing"], **tree["preprocessing"]}
    tree["trainer"] = {**flat["trainer"], **tree["trainer"]}
    (run / "config.yaml").write_text(yaml.safe_dump(tree, allow_unicode=True), encoding="utf-8")
    expected = luban.load(trained_text_run["run"]).predict(["这个手机很好", "服务特别差"])
    assert luban.load(run).predict(["这个手机很好", "服务特别差"]) == expected
