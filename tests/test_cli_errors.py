"""Errors in a second: pre-flight checks before torch is imported, exit codes, Ctrl-C hints per verb, the run
lock, one version string, light imports for prediction, and `luban serve` announcing only a bound port."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

import luban
from luban import cli
from luban.errors import DataError, RunError
from luban.rundir import RunLock

from conftest import assert_no_run, text_config, write_csv, write_jsonl

HEAVY = ("torch", "pandas", "sklearn", "scipy", "transformers", "ray")


def _yaml(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def _cli_in_fresh_process(argv: list[str]) -> dict:
    """Run cli.main(argv) in a new interpreter; report its exit code, stderr and which heavy modules it loaded."""
    code = textwrap.dedent(f"""
        import contextlib, io, json, sys
        from luban.cli import main
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = main({argv!r})
        print(json.dumps({{"rc": rc, "err": err.getvalue(),
                          "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONIOENCODING="utf-8"))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture
def data_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "reviews.csv", [("很好", "positive"), ("很差", "negative")] * 5)


def test_config_typo_is_reported_before_torch(tmp_path, data_csv):
    cfg = text_config(tmp_path / "runs", "typo", data_csv)
    cfg["data"]["colums"] = cfg["data"].pop("columns")
    r = _cli_in_fresh_process(["train", str(_yaml(tmp_path / "typo.yaml", cfg))])
    assert r["rc"] == 2
    assert "data.colums: unknown key (did you mean 'columns'?)" in r["err"]
    assert r["loaded"] == []


def test_missing_data_file_is_reported_before_torch(tmp_path):
    cfg = text_config(tmp_path / "runs", "nofile", tmp_path / "missing.csv")
    r = _cli_in_fresh_process(["train", str(_yaml(tmp_path / "c.yaml", cfg))])
    assert r["rc"] == 2
    assert r["err"].startswith(f"error: data.train: {tmp_path / 'missing.csv'}: file not found")
    assert r["loaded"] == []
    assert_no_run(tmp_path / "runs", "nofile")


@pytest.mark.parametrize("verb", ["train", "tune", "cv"])
def test_missing_column_names_yaml_path_file_and_real_columns(tmp_path, data_csv, verb):
    cfg = text_config(tmp_path / "runs", "nocol", data_csv, data={"columns": {"text": "sentence"}})
    r = _cli_in_fresh_process([verb, str(_yaml(tmp_path / "c.yaml", cfg))])
    assert r["rc"] == 2
    assert r["err"] == (f"error: data.columns.text: column 'sentence' not found in train file {data_csv}; "
                        "its columns are: text, label\n")
    assert r["loaded"] == []
    assert not (tmp_path / "runs").exists()


def test_evaluate_preflight_checks_the_file_columns_before_torch(tmp_path, trained_text_run):
    unlabelled = write_csv(tmp_path / "unlabelled.csv", [("很好",), ("很差",)], header=("text",))
    r = _cli_in_fresh_process(["evaluate", str(trained_text_run["run"]), "--data", str(unlabelled)])
    assert r["rc"] == 2
    assert f"data.columns.label: column 'label' not found in --data file {unlabelled}" in r["err"]
    assert "its columns are: text" in r["err"]
    assert r["loaded"] == []
    r = _cli_in_fresh_process(["evaluate", str(trained_text_run["run"]), "--data", str(tmp_path / "none.csv")])
    assert r["rc"] == 2 and "--data: " in r["err"] and "file not found" in r["err"]


@pytest.mark.parametrize("argv", [["predict", "{missing}", "--text", "x"], ["serve", "{missing}"],
                                  ["export", "{missing}"], ["predict", "{run}", "--input", "{missing}"]])
def test_verbs_on_runs_check_the_run_and_input_before_torch(tmp_path, trained_text_run, argv):
    missing = tmp_path / "nope"
    r = _cli_in_fresh_process([x.format(missing=missing, run=trained_text_run["run"]) for x in argv])
    assert r["rc"] == 2 and r["loaded"] == []
    assert r["err"] in (f"error: {missing}: no such run directory\n", f"error: --input: {missing}: file not found\n")


def test_preflight_reads_jsonl_keys_tsv_headers_and_headerless_indexes(tmp_path):
    from luban.config import validate
    from luban.preflight import check_data

    base = {"task": "text_classification", "data": {"train": "x"}}
    jl = write_jsonl(tmp_path / "a.jsonl", [{"text": "好", "label": "p"}, {"text": "差", "label": "n", "id": 3}])
    cfg = validate({**base, "data": {"train": str(jl), "columns": {"text": "text", "label": "id"}}})
    check_data(cfg)  # "id" appears in the second record: fine
    cfg = validate({**base, "data": {"train": str(jl), "columns": {"text": "body", "label": "label"}}})
    with pytest.raises(DataError, match=r"data.columns.text: column 'body' not found .*columns are: text, label, id"):
        check_data(cfg)
    tsv = tmp_path / "a.tsv"
    tsv.write_text("label\tsentence\np\t好\n", encoding="utf-8")
    cfg = validate({**base, "data": {"train": str(tsv), "columns": {"text": "text", "label": "label"}}})
    with pytest.raises(DataError, match="columns are: label, sentence"):
        check_data(cfg)
    headerless = tmp_path / "b.csv"
    headerless.write_text("好,p\n差,n\n", encoding="utf-8")
    cfg = validate({**base, "data": {"train": str(headerless), "header": False, "columns": {"text": 0, "label": 2}}})
    with pytest.raises(DataError, match="data.columns.label: column index 2 is out of range: train file .* has 2"):
        check_data(cfg)
    cfg = validate({**base, "data": {"train": str(tmp_path), "columns": {"text": "t", "label": "l"}}})
    check_data(cfg)  # a folder (e.g. of images) is left to the task's reader
    tags = write_jsonl(tmp_path / "ner.jsonl", [{"tokens": ["上", "海"], "tags": ["B-LOC", "I-LOC"]}])
    cfg = validate({"task": "token_classification", "data": {"train": str(tags), "columns": {
        "tokens": "tokens", "tags": "tags", "text": "sentence"}}})
    check_data(cfg)  # `text` names raw prediction inputs, not a column of the training file


# ----------------------------------------------------------------------------------------------- exit codes


def _patched(monkeypatch, verb_fn: str, exc: BaseException):
    def boom(a):
        raise exc

    monkeypatch.setattr(cli, verb_fn, boom)
    monkeypatch.setattr(cli, "PREFLIGHT", {})


def test_internal_error_is_one_line_exit_1_and_traceback_only_with_debug(monkeypatch, capsys):
    _patched(monkeypatch, "_cmd_predict", ZeroDivisionError("division by zero"))
    monkeypatch.delenv("LUBAN_DEBUG", raising=False)
    assert cli.main(["predict", "RUN", "--text", "x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: internal error (ZeroDivisionError: division by zero)")
    assert "please report" in err and "Traceback" not in err
    assert cli.main(["predict", "RUN", "--text", "x", "--debug"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("LUBAN_DEBUG", "1")
    assert cli.main(["predict", "RUN", "--text", "x"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_closed_output_pipe_exits_141_quietly(tmp_path, trained_text_run):
    code = (f"import sys\nfrom luban.cli import main\n"  # 2,000 output rows: more than a pipe holds
            f"sys.exit(main(['predict', {str(trained_text_run['run'])!r}] + ['--text', '很好'] * 2000))")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.read(10)
    p.stdout.close()  # like `| head -c 10`
    err = p.stderr.read().decode()
    assert p.wait(300) == 141, err
    assert "Traceback" not in err and "internal error" not in err


def test_user_error_exits_2_without_traceback(monkeypatch, capsys):
    _patched(monkeypatch, "_cmd_export", RunError("RUN: no such run directory"))
    monkeypatch.delenv("LUBAN_DEBUG", raising=False)
    assert cli.main(["export", "RUN"]) == 2
    assert capsys.readouterr().err == "error: RUN: no such run directory\n"


@pytest.mark.parametrize("argv, fn, hint", [
    (["predict", "RUN", "--text", "x"], "_cmd_predict", "interrupted; run the command again"),
    (["predict", "RUN", "--input", "a.csv", "--output", "p.jsonl"], "_cmd_predict",
     "interrupted; p.jsonl may be incomplete; run the command again"),
    (["serve", "RUN"], "_cmd_serve", "interrupted; the server stopped"),
    (["evaluate", "RUN", "--data", "t.csv"], "_cmd_evaluate", "interrupted; no metrics were written"),
    (["export", "RUN"], "_cmd_export", "interrupted; the export did not finish: run `luban export RUN` again"),
    (["tune", "c.yaml"], "_cmd_tune", "interrupted; finished trials are kept: continue the study with "
                                     "`luban tune c.yaml --resume`"),
    (["cv", "c.yaml"], "_cmd_cv", "interrupted; the folds are not resumable: run `luban cv c.yaml` again"),
    (["generate", "RUN", "--prompt", "hi"], "_cmd_generate", "interrupted"),
])
def test_ctrl_c_hint_fits_the_verb(monkeypatch, capsys, argv, fn, hint):
    _patched(monkeypatch, fn, KeyboardInterrupt())
    assert cli.main(argv) == 130
    err = capsys.readouterr().err
    assert err == hint + "\n"
    assert "luban train" not in err


def test_ctrl_c_during_train_offers_resume_only_when_a_checkpoint_exists(monkeypatch, capsys, tmp_path, data_csv):
    config = _yaml(tmp_path / "c.yaml", text_config(tmp_path / "runs", "zh", data_csv))
    _patched(monkeypatch, "_cmd_train", KeyboardInterrupt())
    assert cli.main(["train", str(config)]) == 130
    assert capsys.readouterr().err == "interrupted; no checkpoint was written; nothing to resume\n"
    (tmp_path / "runs" / "zh.partial" / "checkpoints" / "last").mkdir(parents=True)
    assert cli.main(["train", str(config)]) == 130
    assert capsys.readouterr().err == (f"interrupted; continue from the last checkpoint with "
                                       f"`luban train {config} --resume` (or start over with --restart)\n")


# ----------------------------------------------------------------------------------------------- version


def test_one_version_string(capsys):
    import tomllib

    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"luban {luban.__version__}"
    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "luban.__version__"}
    pytest.importorskip("fastapi")
    from luban.serve.app import create_app
    from luban.serve.settings import ServeSettings

    app = create_app(settings=ServeSettings(runs=["unused"]), background=True)  # models load in its lifespan only
    assert app.version == luban.__version__
    assert app.openapi()["info"]["version"] == luban.__version__


# ----------------------------------------------------------------------------------------------- run lock


def test_a_second_run_of_the_same_name_is_refused(tmp_path, data_csv):
    cfg = text_config(tmp_path / "runs", "zh", data_csv)
    with RunLock(tmp_path / "runs", "zh"):
        with pytest.raises(RunError, match=rf"run 'zh' in .* is being written by process {os.getpid()} right now"):
            luban.train(cfg, quiet=True)
    assert not (tmp_path / "runs" / ".zh.lock").exists()
    with RunLock(tmp_path / "runs", "other"):  # another name is not blocked
        pass


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from luban.rundir import RunLock
        RunLock({str(tmp_path)!r}, "zh").acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunError, match=f"by process {holder.pid} right now"):
            RunLock(tmp_path, "zh").acquire()
    finally:
        holder.kill()
        holder.wait(30)
    assert (tmp_path / ".zh.lock").exists()  # left behind by the killed process ...
    with RunLock(tmp_path, "zh"):  # ... and not in the way
        pass


def test_concurrent_cli_train_is_refused_with_a_clear_message(tmp_path, data_csv, capsys):
    config = _yaml(tmp_path / "c.yaml", text_config(tmp_path / "runs", "zh", data_csv))
    with RunLock(tmp_path / "runs", "zh"):
        assert cli.main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: run 'zh' in ") and "is being written" in err and "Traceback" not in err
    assert_no_run(tmp_path / "runs", "zh")


# ----------------------------------------------------------------------------------------------- light loading


def test_loading_a_text_run_does_not_import_scikit_learn(trained_text_run):
    code = (f"import sys, luban; p = luban.load({str(trained_text_run['run'])!r}); p.predict(['很好']); "
            "print([m for m in ('sklearn', 'scipy') if m in sys.modules])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------------------------- serve


def test_serve_announces_only_a_listening_port(trained_text_run, monkeypatch, capsys):
    uvicorn = pytest.importorskip("uvicorn")
    from luban.serve import app as serve_app

    seen = {}

    def fake_run(self, sockets=None):
        port = sockets[0].getsockname()[1]
        seen["printed"] = capsys.readouterr().out
        with socket.create_connection(("127.0.0.1", port), timeout=5):  # accepted into the listen backlog
            seen["connected"] = True
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    serve_app.serve([str(trained_text_run["run"])], port=free)
    assert seen["connected"] and f"serving {trained_text_run['run']} on http://127.0.0.1:{free}" in seen["printed"]


def test_serve_on_a_busy_port_is_a_clear_error(trained_text_run):
    pytest.importorskip("uvicorn")
    from luban.errors import LubanError
    from luban.serve.app import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        with pytest.raises(LubanError, match=rf"cannot listen on 127.0.0.1:{s.getsockname()[1]}: .*another --port"):
            serve([str(trained_text_run["run"])], port=s.getsockname()[1])


def test_exit_code_of_a_process(tmp_path):
    r = subprocess.run([sys.executable, "-m", "luban", "train", str(tmp_path / "none.yaml")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error: config file not found")


def test_docs_cli_lists_every_verb_and_flag():
    import argparse

    doc = (Path(__file__).parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    parser = cli.build_parser()
    for flag in ("--version", "--debug"):
        assert f"`{flag}`" in doc
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))

    def check(name, sub):
        head = f"### `luban {name}`"
        assert head in doc, f"docs/cli.md has no section {head}"
        section = doc.split(head, 1)[1].split("\n### ", 1)[0]
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, f"docs/cli.md: luban {name} {flag} is not documented"
            if isinstance(action, argparse._SubParsersAction):
                for child, child_parser in action.choices.items():
                    check(f"{name} {child}", child_parser)

    for name, sub in verbs.choices.items():
        check(name, sub)


def test_preflight_reads_each_file_in_its_own_encoding(tmp_path):
    from luban.config import validate
    from luban.preflight import check_data

    gbk = tmp_path / "train.csv"
    gbk.write_bytes("评论,标签\n很好,p\n".encode("gbk"))
    cfg = validate({"task": "text_classification",
                    "data": {"train": str(gbk), "encoding": {"train": "gbk"},
                             "columns": {"text": "text", "label": "标签"}}})
    with pytest.raises(DataError, match="data.columns.text: column 'text' not found .*columns are: 评论, 标签"):
        check_data(cfg)  # data.encoding per file: the header is read as GBK, not skipped
