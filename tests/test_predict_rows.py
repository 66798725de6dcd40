"""Every input row gets exactly one output row: whitespace-only, empty, NUL and 10 MB rows in CSV/TSV/JSONL/TXT/
JSON/Parquet through predict (CLI and API) for every task that reads files; ids and kept columns; output formats
read back; --on-error error-row / skip-row / fail; the readers' edge cases (JSON arrays, list-valued fields)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

import luban
from luban.cli import main
from luban.data.readers import iter_table, read_table
from luban.errors import DataError

from conftest import deep_update, tabular_config, text_config, write_csv, write_jsonl, zh_sentences

WS = "\u3000\u3000"  # two full-width spaces: the row today's readers dropped
BIG = "好" * (10 * 2**20 // 3)  # a 10 MB row (UTF-8)
# (text, usable?) — the rows planted in every text file below
ROWS = [("这个手机非常好", True), (WS, False), ("那个酒店真差", True), ("", False), ("\x00", False),
        ("我的电脑十分好", True), ("  \t ", False), (BIG, True), ("他们的餐厅挺差", True)]


def write_inputs(path: Path, rows=ROWS, ids=True) -> Path:
    """The rows in the file's format, with an id column (r0, r1, ...) except for .txt (one text per line)."""
    texts = [t for t, _ in rows]
    ext = path.suffix
    if ext == ".txt":
        path.write_text("".join(t.replace("\t", " ") + "\n" for t in texts), encoding="utf-8")
    elif ext in (".csv", ".tsv"):
        with open(path, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="," if ext == ".csv" else "\t",
                           quoting=csv.QUOTE_MINIMAL if ext == ".csv" else csv.QUOTE_NONE, escapechar="\\")
            w.writerow(["id", "text"] if ids else ["text"])
            for i, t in enumerate(texts):
                t = t if ext == ".csv" else t.replace("\t", " ")
                w.writerow([f"r{i}", t] if ids else [t])
    elif ext == ".jsonl":
        write_jsonl(path, [{"id": f"r{i}", "text": t} for i, t in enumerate(texts)])
    elif ext == ".json":
        path.write_text(json.dumps([{"id": f"r{i}", "text": t} for i, t in enumerate(texts)], ensure_ascii=False,
                                   indent=1), encoding="utf-8")
    elif ext == ".parquet":
        pd.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).to_parquet(path)
    return path


def check_aligned(out: list[dict], rows=ROWS, key="row"):
    assert len(out) == len(rows)
    for i, (r, (_, ok)) in enumerate(zip(out, rows)):
        assert r[key] == (i if key == "row" else f"r{i}")
        assert ("error" in r) == (not ok), (i, r)
        if ok:
            assert r["label"] in ("positive", "negative")
        else:
            assert r["error"].startswith("empty text")


# ------------------------------------------------------------------------------------------------ readers
def test_whitespace_only_and_empty_rows_are_rows(tmp_path):
    f = tmp_path / "one.tsv"
    f.write_text(f"text\na\n{WS}\n\nb\n\n\n", encoding="utf-8")  # trailing empty lines end the file
    df = read_table(f)
    assert list(df["text"]) == ["a", WS, None, "b"] and list(df["_line"]) == [2, 3, 4, 5]
    f2 = tmp_path / "two.csv"
    f2.write_text("id,text\n1,a\n\n2, \n", encoding="utf-8")  # an empty line holds no fields of a 2-column file
    assert list(read_table(f2)["text"]) == ["a", " "]


def test_txt_is_one_text_per_line_and_chunks_stream(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a\tb\n\n  \nid,text\n", encoding="utf-8")
    (df,) = iter_table(f, "lines", chunk_rows=None)
    assert list(df["text"]) == ["a\tb", "", "  ", "id,text"]  # no header, no delimiter
    chunks = list(iter_table(write_inputs(tmp_path / "in.tsv"), chunk_rows=4))
    assert [len(c) for c in chunks] == [4, 4, 1] and list(chunks[2]["id"]) == ["r8"]


def test_json_array_of_objects_is_read_else_refused(tmp_path):
    f = write_inputs(tmp_path / "in.json")
    df = read_table(f)
    assert list(df["id"]) == [f"r{i}" for i in range(len(ROWS))]
    assert list(df["_line"])[:2] == [2, 6]  # the line each object starts on
    obj = tmp_path / "obj.json"
    obj.write_text('{\n "text": "a"\n}\n', encoding="utf-8")
    with pytest.raises(DataError, match="luban reads JSON Lines or a JSON array of objects"):
        read_table(obj)
    arr = tmp_path / "nums.json"
    arr.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected a JSON object, found int; luban reads JSON Lines"):
        read_table(arr)


def test_list_valued_text_field_is_named(tmp_path, out_dir):
    recs = [{"paragraphs": [t, t], "label": lab} for t, lab in zh_sentences(20)]
    f = write_jsonl(tmp_path / "lists.jsonl", recs)
    with pytest.raises(DataError, match=r"line 1: field 'paragraphs': expected a string, found a list \(join it "
                                        r"or name one element\)"):
        luban.train(text_config(out_dir, "lists", f, data={"columns": {"text": "paragraphs"}}), quiet=True)


def test_missing_column_error_names_a_misread_header(trained_text_run, tmp_path):
    f = tmp_path / "noheader.tsv"
    f.write_text("这个手机 非常好\n那个酒店 真差\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"column 'text' not found; columns are: 这个手机 非常好 \(read from the "
                                        r"file's first line as its header; if the file has no header line"):
        luban.load(trained_text_run["run"]).predict_file(f)


# ------------------------------------------------------------------------------------------ text classification
@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".txt", ".json", ".parquet"])
def test_text_every_row_gets_one_output_api(trained_text_run, tmp_path, ext, capsys):
    f = write_inputs(tmp_path / f"in{ext}")
    p = luban.load(trained_text_run["run"])
    out = p.predict_file(f, id_column=None if ext == ".txt" else "id")
    check_aligned(out, key="row" if ext == ".txt" else "id")
    assert "4 error rows (empty text ×3, empty text (control characters only) ×1" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "parquet"])
def test_cli_output_formats_round_trip(trained_text_run, tmp_path, fmt, capsys):
    f = write_inputs(tmp_path / "in.tsv")
    out = tmp_path / f"preds.{fmt}"
    assert main(["predict", str(trained_text_run["run"]), "--input", str(f), "--output", str(out),
                 "--id-column", "id", "--keep-columns", "text", "--chunk-rows", "4"]) == 0
    err = capsys.readouterr().err
    assert f"wrote {len(ROWS)} rows to {out}: 5 predictions, 4 error rows (empty text ×3, empty text (control characters only) ×1" in err
    if fmt == "jsonl":
        back = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    elif fmt == "parquet":
        back = pq.read_table(out).to_pylist()  # typed: score a double, error null where predicted
    else:
        with open(out, encoding="utf-8", newline="") as fh:
            back = list(csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t"))
    assert len(back) == len(ROWS)
    for i, r in enumerate(back):
        assert r["id"] == f"r{i}"
        assert len(r["input_text"] or "") == len(ROWS[i][0].replace("\t", " ")) or ROWS[i][0] == ""
        bad, err = not ROWS[i][1], r.get("error")
        if bad:
            assert err.startswith("empty text")
        else:
            assert err in (None, "")  # missing: absent (jsonl), empty (csv/tsv), null (parquet)
            probs = r["probabilities"] if fmt == "jsonl" else json.loads(r["probabilities"])
            assert r["label"] == max(probs, key=probs.get) and float(r["score"]) == max(probs.values())
    assert not list(tmp_path.glob(".*partial"))


def test_cli_on_error_fail_and_skip_row(trained_text_run, tmp_path, capsys):
    f = write_inputs(tmp_path / "in.jsonl")
    out = tmp_path / "preds.parquet"
    assert main(["predict", str(trained_text_run["run"]), "--input", str(f), "--output", str(out),
                 "--on-error", "fail", "--chunk-rows", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {f}: line 2: field 'text': empty text") and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))  # no partial output left behind
    assert main(["predict", str(trained_text_run["run"]), "--input", str(f), "--output", str(out),
                 "--on-error", "skip-row"]) == 0
    err = capsys.readouterr().err
    assert "wrote 5 predictions" in err and "skipped 4 rows of 9 (--on-error skip-row: empty text ×3" in err
    back = pd.read_parquet(out)
    assert list(back["row"]) == [i for i, (_, ok) in enumerate(ROWS) if ok]


def test_cli_keep_input_and_stdout(trained_text_run, tmp_path, capsys):
    f = write_csv(tmp_path / "in.csv", [["a1", "这个手机非常好", "x"], ["a2", WS, "y"]], header=("id", "text", "label"))
    assert main(["predict", str(trained_text_run["run"]), "--input", str(f), "--keep-input"]) == 0
    cap = capsys.readouterr()
    rows = [json.loads(x) for x in cap.out.splitlines()]
    assert rows[0]["row"] == 0 and rows[0]["id"] == "a1" and rows[0]["input_text"] == "这个手机非常好"
    assert rows[0]["input_label"] == "x" and rows[0]["label"] in ("positive", "negative")
    assert rows[1] == {"row": 1, "id": "a2", "input_text": WS, "input_label": "y", "error": "empty text"}
    assert "1 error row (empty text ×1" in cap.err
    assert main(["predict", str(trained_text_run["run"]), "--input", str(f), "--output", "x.xlsx"]) == 2
    assert "use .jsonl, .csv, .tsv or .parquet" in capsys.readouterr().err


def test_api_predict_list_error_rows_and_text_cli(trained_text_run, capsys):
    p = luban.load(trained_text_run["run"])
    with pytest.raises(DataError, match="input 2: empty text"):
        p.predict(["很好", WS])  # in-memory inputs fail by default
    out = p.predict(["很好", WS, "真差"], on_error="error-row")
    assert out[1] == {"error": "empty text"} and out[0]["label"] == "positive" and out[2]["label"] == "negative"
    assert main(["predict", str(trained_text_run["run"]), "--text", "很好", "--text", WS]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[1] == {"error": "empty text"}


def test_evaluate_counts_the_rows_it_skips(trained_text_run, tmp_path, capsys):
    rows = zh_sentences(10, seed=5)
    f = tmp_path / "labelled.tsv"
    f.write_text("text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in rows) + f"{WS}\tpositive\n",
                 encoding="utf-8")
    assert main(["evaluate", str(trained_text_run["run"]), "--data", str(f)]) == 0
    err = capsys.readouterr().err
    assert f"{len(rows) + 1} rows -> {len(rows)} kept" in err and "dropped 1 empty text (lines 22)" in err


def test_onnx_backend_keeps_rows(trained_text_run, tmp_path):
    pytest.importorskip("onnxruntime")
    run = tmp_path / "zh"
    shutil.copytree(trained_text_run["run"], run)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    f = write_inputs(tmp_path / "in.csv")
    onnx = luban.load(run)
    assert onnx.backend == "onnx"
    got = onnx.predict_file(f, id_column="id", chunk_rows=3)
    check_aligned(got, key="id")
    torch_rows = luban.load(run, backend="torch").predict_file(f, id_column="id")
    assert [r.get("label") for r in got] == [r.get("label") for r in torch_rows]


# ----------------------------------------------------------------------------------------------- other tasks
def test_tabular_rows_with_bad_cells_get_error_rows(out_dir, tmp_path, capsys):
    rows = [[str(a), str(b), "big" if a + b > 10 else "small"] for a in range(11) for b in range(11)]
    train = write_csv(tmp_path / "t.csv", rows, header=("a", "b", "size"))
    run = luban.train(tabular_config(out_dir, "tab", "tabular_classification",
                                     {"train": str(train), "columns": {"label": "size"}},
                                     trainer={"epochs": 2}), quiet=True)
    inp = write_csv(tmp_path / "in.csv", [["k0", "0", "1"], ["k1", "   ", "2"], ["k2", "abc", "3"], ["k3", "", ""],
                                          ["k4", "10", "9"]], header=("key", "a", "b"))
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), "--input", str(inp), "--output", str(out), "--id-column", "key"]) == 0
    back = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["key"] for r in back] == ["k0", "k1", "k2", "k3", "k4"]
    assert back[2]["error"] and "abc" in back[2]["error"] and not back[2]["label"]
    assert all(back[i]["label"] in ("big", "small") for i in (0, 1, 3, 4))  # missing cells are imputed


def test_image_listing_rows_with_missing_or_bad_files(tmp_path, out_dir):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    for kind in ("horizontal", "vertical"):
        (folder / kind).mkdir(parents=True)
        for i in range(6):
            arr = (rng.random((8, 8, 3)) * 255).astype("uint8")
            Image.fromarray(arr).save(folder / kind / f"{i}.png")
    cfg = {"task": "image_classification", "seed": 5, "data": {"train": str(folder)},
           "preprocessing": {"image": {"size": 8, "resize": 8, "augment": {"hflip": False}}},
           "model": {"type": "resnet", "widths": [4], "blocks": [1]},
           "trainer": {"epochs": 1, "batch_size": 8, "num_threads": 1, "device": "cpu"},
           "evaluation": {"baseline": False}, "output": {"dir": str(out_dir), "name": "img", "tensorboard": False}}
    run = luban.train(cfg, quiet=True)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    listing = write_csv(tmp_path / "in.csv", [["i0", "imgs/horizontal/0.png"], ["i1", ""], ["i2", "nope.png"],
                                              ["i3", "broken.png"], ["i4", "imgs/vertical/1.png"]],
                        header=("id", "image"))
    out = luban.load(run).predict_file(listing, id_column="id")
    assert [r["id"] for r in out] == ["i0", "i1", "i2", "i3", "i4"]
    assert out[1]["error"] == "empty image path" and out[2]["error"].startswith("image file not found")
    assert "error" in out[3] and "label" in out[0] and "label" in out[4]
    folder_out = luban.load(run).predict_file(folder / "vertical")  # a folder: one row per image
    assert [r["row"] for r in folder_out] == list(range(6))


def test_token_classification_seq2seq_text_generation_keep_rows(tmp_path):
    from test_seq2seq import reversal_config, reversal_pairs, write_pairs
    from test_text_generation import lm_config
    from test_token_classification import ner_config, ner_rows

    out = tmp_path / "runs"
    ner = luban.train(ner_config(out, "ner", write_jsonl(tmp_path / "ner.jsonl", ner_rows(60, 0)),
                                 trainer={"epochs": 1}), quiet=True)
    rev = luban.train(reversal_config(out, write_pairs(tmp_path / "p.tsv", reversal_pairs(120, 0)), "rev",
                                      trainer={"epochs": 1}, generation={"num_beams": 1, "max_new_tokens": 4}),
                      quiet=True)
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat. " * 40, encoding="utf-8")
    lm = luban.train(lm_config(out, "lm", corpus, trainer={"epochs": 1, "steps_per_epoch": 2},
                               generation={"max_new_tokens": 3, "sample_prompts": []}), quiet=True)
    for run, texts in ((ner, ["alice lives in paris", WS, "", "bob flew to rome"]),
                       (rev, ["1 2 3", WS, "", "4 5 6"]), (lm, ["the cat", WS, "", "the mat"])):
        f = tmp_path / "in.txt"
        f.write_text("\n".join(texts) + "\n", encoding="utf-8")
        got = luban.load(run).predict_file(f)
        assert [r["row"] for r in got] == [0, 1, 2, 3], run
        assert ["error" in r for r in got] == [False, True, True, False], (run, got)
    f = write_jsonl(tmp_path / "tok.jsonl", [{"tokens": ["alice", "met", "bob"]}, {"tokens": []},
                                             {"tokens": "carol visited oslo"}])
    got = luban.load(ner).predict_file(f)
    assert got[1] == {"row": 1, "error": "no tokens"} and got[2]["tokens"] == ["carol", "visited", "oslo"]
