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


def test_clean_redact_before_training_is_counted_never_shown(out_dir, tmp_path):
    import json

    import luban
    from conftest import text_config, write_csv, zh_sentences

    rows = zh_sentences(60, seed=3)
    phones = [f"139{i:08d}" for i in range(10)]
    rows = [(t + (f"，电话{phones[i]}" if i < 10 else "") + ("，邮件 u%d@example.com" % i if 10 <= i < 14 else ""), l)
            for i, (t, l) in enumerate(rows)]
    train = write_csv(tmp_path / "pii.csv", rows)
    cfg = text_config(out_dir, "pii", train, data={"clean": {"redact": ["phone", "email"]}}, trainer={"epochs": 1})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    red = m["data"]["cleaning"][0]["redacted"]
    assert red["phone"]["count"] == 10 and red["email"]["count"] == 4 and red["phone"]["columns"] == ["text"]
    assert sorted(red["phone"]["lines"]) == list(range(2, 12))  # where: the source lines (header is line 1)
    everything = "".join(p.read_text(encoding="utf-8", errors="ignore") for p in run.rglob("*") if p.is_file())
    assert not any(p in everything for p in phones) and "@example.com" not in everything
    assert "redacted 10 phone" in (run / "report.html").read_text(encoding="utf-8")


def test_config_errors_name_the_field():
    from luban.config import validate
    from luban.errors import ConfigError

    base = {"task": "text_classification", "data": {"train": "x.csv", "columns": {"text": "t", "label": "l"}}}
    with pytest.raises(ConfigError, match=r"data.clean.redact.1: must be one of"):
        validate({**base, "data": {**base["data"], "clean": {"redact": ["phone", "passport"]}}})
    with pytest.raises(ConfigError, match=r"data.clean.redact_ner: redacting person"):
        validate({**base, "data": {**base["data"], "clean": {"redact": ["person"]}}})
    tab = {"task": "tabular_classification", "data": {"train": "x.csv", "columns": {"label": "y"},
                                                      "clean": {"redact": ["phone"]}}}
    with pytest.raises(ConfigError, match=r"data.clean.redact: redaction before training is for the text tasks"):
        validate(tab)


def test_luban_redact_cli_on_csv_jsonl_and_text(tmp_path, capsys):
    import json

    from luban.cli import main

    src = tmp_path / "in.csv"
    src.write_text("id,text,note\n1,\"call 13812345678 or a@b.cn\",price 199.00\n2,订单 20231207000123,ip 10.0.0.1\n",
                   encoding="utf-8")
    assert main(["redact", "--input", str(src), "--output", str(tmp_path / "out.csv"), "--json"]) == 0
    out = (tmp_path / "out.csv").read_text(encoding="utf-8")
    assert "[PHONE]" in out and "[EMAIL]" in out and "[IP]" in out and "20231207000123" in out and "199.00" in out
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["counts"]["phone"] == 1 and res["counts"]["ip"] == 1 and res["columns"]["note"]["ip"] == 1
    jl = tmp_path / "in.jsonl"
    jl.write_text(json.dumps({"q": "邮箱 x@y.com", "n": 3}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["redact", "--input", str(jl), "--output", str(tmp_path / "o.jsonl"), "--columns", "q"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text(encoding="utf-8")) == {"q": "邮箱 [EMAIL]", "n": 3}
    txt = tmp_path / "in.txt"
    txt.write_text("身份证 11010519491231002X\n无\n", encoding="utf-8")
    assert main(["redact", "--input", str(txt), "--output", str(tmp_path / "o.txt"), "--types", "id_card",
                 "--style", "pseudonym"]) == 0
    assert (tmp_path / "o.txt").read_text(encoding="utf-8") == "身份证 [ID_CARD_1]\n无\n"
    assert main(["redact", "--input", str(src), "--output", str(tmp_path / "bad.csv"), "--columns", "nope"]) == 2
    assert main(["redact", "--input", str(src), "--output", str(tmp_path / "bad.csv"), "--types", "passport"]) == 2
    err = capsys.readouterr().err
    assert "--columns: column 'nope' not found" in err and "--types: unknown PII type 'passport'" in err
    assert not (tmp_path / "bad.csv").exists()


def test_serve_redact_middleware_on_requests_and_responses():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from luban.serve.redaction import RedactMiddleware

    app = FastAPI()
    seen = {}

    @app.post("/echo")
    async def echo(body: dict):
        seen.update(body)
        return {"model": "m", "reply": "我的电话 13987654321", "inputs": body["inputs"]}

    app.add_middleware(RedactMiddleware, redactor=Redactor(["phone", "email"]))
    with TestClient(app) as c:
        r = c.post("/echo", json={"model": "a@b.com", "inputs": ["mail me: a@b.com", "13812345678"]})
    assert r.status_code == 200
    assert seen["inputs"] == ["mail me: [EMAIL]", "[PHONE]"] and seen["model"] == "a@b.com"  # names stay
    assert r.json() == {"model": "m", "reply": "我的电话 [PHONE]", "inputs": ["mail me: [EMAIL]", "[PHONE]"]}
