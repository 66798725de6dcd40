"""BLEU, chrF and ROUGE (sacrebleu / rouge-score) against values computed here from first principles on tiny
crafted pairs; CJK text is tokenized by character and never dropped; the lead-N sentence splitter."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from luban.evaluate import text_metrics as tm


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu_by_hand(hyps: list[list[str]], refs: list[list[str]]) -> float:
    """Corpus BLEU-4: clipped n-gram precisions summed over the corpus, geometric mean, brevity penalty."""
    match, total = [0] * 4, [0] * 4
    hyp_len = sum(len(h) for h in hyps)
    ref_len = sum(len(r) for r in refs)
    for h, r in zip(hyps, refs):
        for n in range(1, 5):
            hc, rc = ngrams(h, n), ngrams(r, n)
            match[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(0, len(h) - n + 1)
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(match, total)) / 4)


def test_bleu_equals_hand_computed_english():
    hyp, ref = "a b c d e f", "a b c d x f"
    # precisions 5/6, 3/5, 2/4, 1/3, equal lengths: BLEU = (1/12) ** (1/4)
    assert tm.bleu([hyp], [ref]) == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-6)
    assert tm.bleu([hyp], [ref]) == pytest.approx(bleu_by_hand([hyp.split()], [ref.split()]), abs=1e-6)
    # a corpus of two, the hypotheses shorter than the references: the brevity penalty applies to the totals
    hyps = ["the cat sat on the mat", "a b c d e"]
    refs = ["the cat sat on the red mat", "a b c d e f"]
    expected = bleu_by_hand([h.split() for h in hyps], [r.split() for r in refs])
    assert tm.bleu(hyps, refs) == pytest.approx(expected, abs=1e-6)
    assert tm.bleu(refs, refs) == pytest.approx(100.0)


def test_bleu_chinese_uses_the_zh_tokenizer_one_token_per_character():
    hyp, ref = "我爱北京天安门。", "我爱北京的天安门。"
    assert tm.bleu_tokenizer([ref]) == "zh" and tm.bleu_tokenizer(["plain English"]) == "13a"
    # by hand over characters: p1 8/8, p2 6/7, p3 4/6, p4 2/5, brevity penalty exp(1 - 9/8)
    expected = 100 * math.exp(1 - 9 / 8) * (1 * 6 / 7 * 4 / 6 * 2 / 5) ** 0.25
    assert bleu_by_hand([list(hyp)], [list(ref)]) == pytest.approx(expected)
    assert tm.bleu([hyp], [ref]) == pytest.approx(expected, abs=1e-6)
    # 13a would see one "word" per phrase: a different (much lower) score
    assert tm.bleu([hyp], [ref], tokenize="13a") < expected / 2


def test_chrf_equals_hand_computed():
    # character 1..3-grams exist in both (orders 4-6 have none: not counted); precision = recall per order:
    # 2/3, 1/2, 0 -> averaged 7/18; F-beta(2) of equal P and R is that value
    assert tm.chrf(["abc"], ["abd"]) == pytest.approx(100 * 7 / 18)
    assert tm.chrf(["a bc"], ["ab d"]) == pytest.approx(100 * 7 / 18)  # whitespace is ignored
    assert tm.chrf(["我爱你"], ["我爱他"]) == pytest.approx(100 * 7 / 18)
    # unequal lengths: hyp "ab" vs ref "abcd": P = (1 + 1) / 2 = 1, R = (2/4 + 1/3) / 2 = 5/12; F2 = 5PR/(4P+R)
    p, r = 1.0, 5 / 12
    assert tm.chrf(["ab"], ["abcd"]) == pytest.approx(100 * 5 * p * r / (4 * p + r))


def lcs(a: list[str], b: list[str]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def f1(overlap: int, n_hyp: int, n_ref: int) -> float:
    p, r = overlap / n_hyp, overlap / n_ref
    return 0.0 if overlap == 0 else 2 * p * r / (p + r)


def rouge_by_hand(hyp: list[str], ref: list[str]) -> dict:
    out = {}
    for n, key in ((1, "rouge_1"), (2, "rouge_2")):
        h, r = ngrams(hyp, n), ngrams(ref, n)
        out[key] = f1(sum((h & r).values()), sum(h.values()), sum(r.values()))
    out["rouge_l"] = f1(lcs(hyp, ref), len(hyp), len(ref))
    return out


def test_rouge_equals_hand_computed_english():
    hyp, ref = "The cat sat on the mat.", "the cat is on the mat"
    got = tm.rouge([hyp], [ref])
    # unigram overlap 5 of 6 each way; bigrams 3 of 5; LCS "the cat on the mat" = 5
    assert got["rouge_1"] == pytest.approx(5 / 6)
    assert got["rouge_2"] == pytest.approx(3 / 5)
    assert got["rouge_l"] == pytest.approx(5 / 6)
    assert got == pytest.approx(rouge_by_hand(["the", "cat", "sat", "on", "the", "mat"], ref.split()))


def test_rouge_scores_chinese_by_character_and_never_drops_it():
    from rouge_score import rouge_scorer

    hyp, ref = "我爱北京天安门", "我爱北京的天安门"
    # rouge-score's default tokenizer keeps only [a-z0-9]: a Chinese summary scores 0 even against itself
    default = rouge_scorer.RougeScorer(["rouge1"])
    assert default.score(ref, ref)["rouge1"].fmeasure == 0.0
    got = tm.rouge([hyp], [ref])
    assert got["rouge_1"] == pytest.approx(f1(7, 7, 8))   # 14/15
    assert got["rouge_2"] == pytest.approx(f1(5, 6, 7))   # 我爱 爱北 北京 天安 安门
    assert got["rouge_l"] == pytest.approx(f1(7, 7, 8))
    assert tm.rouge([ref], [ref]) == pytest.approx({"rouge_1": 1.0, "rouge_2": 1.0, "rouge_l": 1.0})
    # mixed text: Chinese characters one by one, Latin words whole, punctuation dropped
    assert tm.CJKAwareTokenizer().tokenize("基于BERT的模型，F1提高3.5%") == [
        "基", "于", "bert", "的", "模", "型", "f1", "提", "高", "3", "5"]


def test_rouge_tokenizer_matches_the_default_on_english():
    from rouge_score import tokenize

    text = "Hello, World! It's 3.5 times the cost -- isn't it?"
    assert tm.CJKAwareTokenizer().tokenize(text) == tokenize.tokenize(text, None)


def test_rouge_corpus_is_the_mean_over_pairs():
    hyps, refs = ["我爱北京天安门", "a b"], ["我爱北京的天安门", "a c"]
    pairs = tm.rouge_pairs(hyps, refs)
    assert tm.rouge(hyps, refs)["rouge_l"] == pytest.approx((pairs[0]["rouge_l"] + pairs[1]["rouge_l"]) / 2)
    assert pairs[1]["rouge_1"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        tm.rouge(["a"], [])


def test_sentence_split_and_lead_n():
    text = "价格是3.5元。服务很好！真的吗？他说：“是的。”最后一句"
    assert tm.split_sentences(text) == ["价格是3.5元。", "服务很好！", "真的吗？", "他说：“是的。”", "最后一句"]
    assert tm.lead_n(text, 1) == "价格是3.5元。"
    assert tm.lead_n(text, 2) == "价格是3.5元。服务很好！"
    assert tm.lead_n(text, 10) == text
    assert tm.lead_n("First one. Second one? Third", 2) == "First one. Second one?"
    assert tm.lead_n("line one\nline two", 1) == "line one"
    assert tm.lead_n("采用修正的参数,建立了模型.仿真结果表明,方法有效.", 1) == "采用修正的参数,建立了模型."
