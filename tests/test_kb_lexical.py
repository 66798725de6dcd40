"""luban.kb.lexical: BM25 over jieba words (Chinese) and word tokens (English), saved without pickle."""

import pytest

pytest.importorskip("bm25s")

from luban.kb.lexical import BM25Index, tokenize  # noqa: E402

TEXTS = ["退货政策：七天无理由退货", "The return policy allows refunds within 7 days", "发票可以在订单页面申请", "",
         "shipping takes three days"]


def test_tokenize_chinese_and_english():
    assert "退货" in tokenize("退货政策：七天无理由退货")
    assert tokenize("Refunds, RETURNS!") == ["refunds", "returns"]


def test_search_ranks_the_matching_text_first_and_roundtrips(tmp_path):
    ix = BM25Index.build(TEXTS)
    assert ix.search("怎么退货", 3)[0][0] == 0
    assert ix.search("refunds policy", 3)[0][0] == 1
    assert ix.search("zzz", 3) == []
    ix.save(tmp_path / "bm25")
    assert not any(p.suffix == ".pkl" for p in (tmp_path / "bm25").iterdir())
    back = BM25Index.load(tmp_path / "bm25")
    assert back.search("怎么退货", 3) == ix.search("怎么退货", 3)
    assert back.search("shipping days", 2)[0][0] == 4


def test_empty_index(tmp_path):
    ix = BM25Index.build([])
    assert ix.search("x", 3) == []
    ix.save(tmp_path / "e")
    assert BM25Index.load(tmp_path / "e").search("x", 3) == []
