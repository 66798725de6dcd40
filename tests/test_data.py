"""The data layer: readers keep source lines, cleaning accounts for drops, splits are seeded and stratified,
batching is a pure function of (seed, epoch), the run dir is written atomically."""

import pandas as pd
import pytest

from luban.config import CleanConfig
from luban.data.batching import epoch_batches, inference_batches, pad_ids
from luban.data.cleaning import clean_text_frame, normalize_text
from luban.data.readers import LINE, read_table, resolve_column
from luban.data.splits import make_splits
from luban.errors import DataError, RunError
from luban.rundir import RunDir, check_finished


def test_csv_reader_keeps_lines_and_quotes(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('text,label\n"hello, world",a\n\n"multi\nline",b\nplain,a\n', encoding="utf-8")
    df = read_table(f)
    assert list(df["text"]) == ["hello, world", "multi\nline", "plain"]
    assert list(df[LINE]) == [2, 5, 6]  # blank line 3 skipped; a quoted newline spans lines 4-5
    assert df.attrs["source"] == str(f)


def test_csv_with_bom_and_custom_delimiter(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("\ufefftext;label\n好;pos\n".encode("utf-8"))
    df = read_table(f, delimiter=";")
    assert list(df.columns) == ["text", "label", LINE]


def test_tsv_reader_does_not_treat_quotes_specially(tmp_path):
    f = tmp_path / "d.tsv"
    f.write_text('text\tlabel\nhe said "hi\tpos\n', encoding="utf-8")
    df = read_table(f)
    assert df["text"][0] == 'he said "hi'


def test_gbk_file_with_encoding_set(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes("text,label\n质量很好,pos\n".encode("gbk"))
    with pytest.raises(DataError, match="line 2"):
        read_table(f)
    assert read_table(f, encoding="gbk")["text"][0] == "质量很好"


def test_jsonl_reader(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a", "label": 1}\n\n{"text": "b", "label": null}\n', encoding="utf-8")
    df = read_table(f)
    assert list(df[LINE]) == [1, 3]
    assert df["label"][1] is None
    f.write_text('[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        read_table(f)


def test_parquet_reader(tmp_path):
    pytest.importorskip("pyarrow")
    f = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["a", None], "label": ["x", "y"]}).to_parquet(f)
    df = read_table(f)
    assert df["text"][1] is None and list(df[LINE]) == [1, 2]
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        read_table(bad)


def test_duplicate_header_names(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,text\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match="duplicate column names"):
        read_table(f)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="is a folder"):
        read_table(tmp_path)


def test_resolve_column(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b\n1,2\n", encoding="utf-8")
    df = read_table(f)
    assert resolve_column(df, 1, "label") == "b"
    with pytest.raises(DataError, match=r"data.columns.text: column '_line' not found"):
        resolve_column(df, LINE, "text")


def test_normalize_text():
    cfg = CleanConfig()
    assert normalize_text("  ＨＥＬＬＯ，\u3000世界  ", cfg) == "HELLO, 世界"  # NFKC folds full-width forms
    assert normalize_text("A  b\n c", CleanConfig(lowercase=True)) == "a b c"
    assert normalize_text("   ", cfg) == ""


def test_clean_text_frame_accounts_for_every_drop():
    df = pd.DataFrame({"t": ["x", "", "y", "x", "z", "z", "w"], "l": ["a", "a", " ", "a", "a", "b", "b"],
                       LINE: [2, 3, 4, 5, 6, 7, 8]})
    df.attrs["source"] = "f.csv"
    out, rep = clean_text_frame(df, "t", "l", CleanConfig())
    assert list(out["text"]) == ["x", "w"] and list(out[LINE]) == [2, 8]
    assert rep.dropped == {"empty text": [3], "missing label": [4], "texts seen with conflicting labels": [6, 7],
                           "exact duplicates": [5]}
    assert rep.rows_in == 7 and rep.rows_out == 2
    assert "dropped 1 empty text (lines 3)" in rep.summary()
    # evaluation data keeps duplicates and conflicts
    out, _ = clean_text_frame(df, "t", "l", CleanConfig(), dedupe=False)
    assert len(out) == 5


def _frame(n_pos, n_neg):
    df = pd.DataFrame({"text": [f"t{i}" for i in range(n_pos + n_neg)],
                       "label": ["pos"] * n_pos + ["neg"] * n_neg, LINE: range(2, n_pos + n_neg + 2)})
    df.attrs["source"] = "train.csv"
    return df


def test_splits_are_seeded_disjoint_and_stratified():
    df = _frame(80, 20)
    a = make_splits({"train": df}, 0.1, 0.2, seed=1, stratify_col="label")
    b = make_splits({"train": df}, 0.1, 0.2, seed=1, stratify_col="label")
    assert all(a[s]["text"].tolist() == b[s]["text"].tolist() for s in a)
    sizes = {s: len(a[s]) for s in a}
    assert sizes == {"train": 70, "validation": 10, "test": 20}
    texts = [set(a[s]["text"]) for s in a]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert (a["test"]["label"] == "neg").sum() == 4  # stratified: 20% of the 20 negatives
    c = make_splits({"train": df}, 0.1, 0.2, seed=2, stratify_col="label")
    assert c["test"]["text"].tolist() != a["test"]["text"].tolist()


def test_given_test_file_is_used_as_is():
    df, test = _frame(50, 50), _frame(3, 3)
    s = make_splits({"train": df, "test": test}, 0.1, 0.1, seed=0, stratify_col="label")
    assert s["test"] is test and len(s["validation"]) == 10 and len(s["train"]) == 90


def test_too_few_rows_to_split():
    with pytest.raises(DataError, match="only 3 rows"):
        make_splits({"train": _frame(2, 1)}, 0.1, 0.1, seed=0, stratify_col="label")


def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    lengths = [(i * 7) % 13 + 1 for i in range(100)]
    a = epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a == epoch_batches(lengths, 8, seed=3, epoch=1)
    assert a != epoch_batches(lengths, 8, seed=3, epoch=2)
    assert sorted(i for b in a for i in b) == list(range(100))  # every row exactly once
    fixed = epoch_batches(lengths, 8, seed=0, epoch=0, shuffle=False)
    flat = [lengths[i] for b in fixed for i in b]
    assert flat == sorted(flat)


def test_inference_batches_cut_where_padding_would_exceed_a_fifth():
    lengths = [10, 10, 10, 10, 10, 50, 50, 50, 50, 12]
    # six short rows pad to 12 (72 <= 1.2 * 62 tokens); a 50-token row would pad them to 350
    assert inference_batches(lengths, 32) == [[0, 1, 2, 3, 4, 9], [5, 6, 7, 8]]
    assert inference_batches(lengths, 3) == [[0, 1, 2], [3, 4, 9], [5, 6, 7], [8]]
    # below min_rows a batch takes the next row whatever the padding
    assert inference_batches([1, 100], 32) == [[0, 1]]
    assert epoch_batches(lengths, 32, 0, 0, shuffle=False) == inference_batches(lengths, 32)


def test_pad_ids():
    ids, mask = pad_ids([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_rundir_lifecycle(tmp_path):
    rd = RunDir(tmp_path, "r")
    work = rd.start(overwrite=False, resume=False)
    assert work == tmp_path / "r.partial" and work.is_dir()
    (work / "x").write_text("1")
    assert rd.finish() == tmp_path / "r" and (tmp_path / "r" / "x").exists() and not work.exists()
    with pytest.raises(RunError, match="already exists"):
        RunDir(tmp_path, "r").start(overwrite=False, resume=False)
    with pytest.raises(RunError, match="not a finished luban run"):
        check_finished(tmp_path / "r")
    RunDir(tmp_path, "r").start(overwrite=True, resume=False)
    RunDir(tmp_path, "r").discard()
    assert not (tmp_path / "r.partial").exists()
    with pytest.raises(RunError, match="no interrupted run"):
        RunDir(tmp_path, "q").start(overwrite=False, resume=True)
