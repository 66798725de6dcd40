"""PII redaction (issue 21 §2): every planted phone / e-mail / ID / bank card / IP / URL in Chinese and English text is
found (recall 1.0 per type), ordinary numbers are left alone (prices, dates, order numbers, 11-digit non-phones,
IDs with a wrong check digit, 16-digit numbers failing Luhn), names through a NER function, and the wiring:
data.clean.redact before training, `luban redact`, the config errors."""

import json
import re
import subprocess
import sys

import pytest

from luban.data.redact import Redactor, TYPES, id_card_valid, luhn_valid, redact_texts

# (text, {type: planted values})
PLANTED = [
    ("请联系张先生，手机13812345678，或者致电010-62345678。", {"phone": ["13812345678", "010-62345678"]}),
    ("我的电话是 +86 139-1234-5678，座机(0755)23456789 转 12", {"phone": ["+86 139-1234-5678", "(0755)23456789"]}),
    ("Call me at (415) 555-2671 or +44 20 7946 0958 tomorrow.", {"phone": ["(415) 555-2671", "+44 20 7946 0958"]}),
    ("邮箱 zhang.san@example.com.cn，备用 li_si+ml@mail.qq.com", {"email": ["zhang.san@example.com.cn",
                                                                      "li_si+ml@mail.qq.com"]}),
    ("Write to jane.doe@example.org.", {"email": ["jane.doe@example.org"]}),
    ("身份证号11010519491231002X，另一个440524188001010014。", {"id_card": ["11010519491231002X",
                                                                  "440524188001010014"]}),
    ("卡号6222021234567890128，信用卡 4111 1111 1111 1111", {"bank_card": ["6222021234567890128",
                                                                       "4111 1111 1111 1111"]}),
    ("Card: 5500-0000-0000-0004, exp 12/27", {"bank_card": ["5500-0000-0000-0004"]}),
    ("服务器 192.168.1.10 和 8.8.8.8 都连不上", {"ip": ["192.168.1.10", "8.8.8.8"]}),
    ("see https://example.com/a?b=1 and www.baidu.com/s?wd=luban。", {"url": ["https://example.com/a?b=1",
                                                                           "www.baidu.com/s?wd=luban"]}),
]

# ordinary numbers that must stay: prices, dates, times, counts, order numbers, 11-digit non-phones, an ID with a
# wrong check character, an ID with an impossible birth date, 16-digit numbers failing Luhn, versions and decimals
CLEAN = [
    "这件衣服售价 199.00 元，原价 1299 元，打 8.5 折。",
    "订单号 20231207000123，共 3 件，2023-12-07 14:30 发货。",
    "The order 12345678901 shipped on 2024-01-15; total $1,299.99 for 12 items.",
    "编号 10086100861 和 20231207001 不是手机号，电话区号 010 也不是。",
    "身份证号码写错了：110105194912310021（校验位不对），440524188013010014（没有 13 月）。",
    "流水号 1234567812345678 与 6222021234567890123 不过 Luhn 校验。",
    "Version 3.10.4 of the app, pi is 3.14159, ratio 2.5:1, room 1024, year 1999.",
    "会议在 2024年3月15日 上午 9:30，预计 120 人参加，预算 50000 元。",
]


def _found(text, kinds):
    r = Redactor(kinds, "tag")
    return r.redact(text), r.counts


@pytest.mark.parametrize("kind", [t for t in TYPES if t not in ("person", "address")])
def test_recall_is_one_per_type_on_planted_pii(kind):
    planted = [(t, p[kind]) for t, p in PLANTED if kind in p]
    assert planted
    total = 0
    for text, values in planted:
        out, counts = _found(text, [kind])
        for v in values:
            assert v not in out, (kind, v, out)
        assert counts[kind] == len(values), (text, out)
        assert out.count(f"[{kind.upper()}]") == len(values)
        total += len(values)
    assert total >= 2


def test_no_false_positives_on_ordinary_numbers():
    kinds = [t for t in TYPES if t not in ("person", "address")]
    for text in CLEAN:
        out, counts = _found(text, kinds)
        assert out == text and not counts, (text, out)


def test_checksums():
    assert id_card_valid("11010519491231002X") and not id_card_valid("110105194912310021")
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_pseudonyms_are_consistent_and_nothing_else_changes():
    texts = ["打13812345678找我", "还是13812345678", "或者13987654321"]
    out, counts = redact_texts(texts, ["phone"], style="pseudonym")
    assert out == ["打[PHONE_1]找我", "还是[PHONE_1]", "或者[PHONE_2]"] and counts == {"phone": 3}


def test_names_through_a_ner_function():
    def ner(texts):  # stands in for a People's Daily NER run: PER / LOC spans with character offsets
        out = []
        for t in texts:
            out.append([{"type": "PER" if m.group() == "张伟" else "LOC", "start": m.start(), "end": m.end()}
                        for m in re.finditer("张伟|北京市海淀区", t)])
        return out

    r = Redactor(["person", "address", "phone"], "tag", ner=ner)
    out, per = r.redact_many(["张伟住在北京市海淀区，电话13812345678"])
    assert out == ["[PERSON]住在[ADDRESS]，电话[PHONE]"]
    assert dict(per[0]) == {"person": 1, "address": 1, "phone": 1}


def test_unknown_type_and_names_without_a_model_are_errors():
    from luban.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown PII type 'passport'"):
        Redactor(["phone", "passport"])
    with pytest.raises(ConfigError, match="person need a named-entity model"):
        Redactor(["person"])
