"""Tokenizers: fit / encode / save / load round trip for every kind, and a pretrained HF tokenizer."""

import json

import pytest

from luban.config import TokenizerConfig
from luban.data.tokenizers import PAD, UNK, build_encoder, load_encoder
from luban.errors import ConfigError, RunError

ZH = ["这个手机非常好", "那个酒店真差啊", "服务很好", "房间很差", "价格特别好呢"]
EN = ["the phone was very good", "The hotel was really bad", "good service", "bad room", "the price was good"]


def round_trip(kind, texts, tmp_path, **kw):
    enc = build_encoder(TokenizerConfig(type=kind, **kw)).fit(texts)
    ids = enc.encode(texts)
    enc.save(tmp_path / kind)
    meta = json.loads((tmp_path / kind / "encoder.json").read_text(encoding="utf-8"))
    assert meta["type"] == kind
    back = load_encoder(tmp_path / kind)
    assert type(back) is type(enc)
    assert back.vocab_size == enc.vocab_size
    assert back.encode(texts) == ids
    assert back.encode(["完全没见过的字 unseenword"]) == enc.encode(["完全没见过的字 unseenword"])
    return enc, ids


def test_char_tokenizer(tmp_path):
    enc, ids = round_trip("char", ZH, tmp_path)
    assert enc.itos[:2] == [PAD, UNK]
    assert len(ids[0]) == len(ZH[0])  # one id per character
    assert enc.itos[ids[2][0]] == "服"
    assert enc.encode(["鑫"]) == [[1]]  # unknown -> [UNK]
    assert enc.encode([""]) == [[1]]  # never an empty sequence
    # the most frequent piece comes first after the specials
    assert enc.itos[2] == "好"


def test_char_tokenizer_truncates_and_limits_vocab(tmp_path):
    enc = build_encoder(TokenizerConfig(type="char", max_length=3, vocab_size=5, min_freq=2)).fit(ZH)
    assert all(len(s) <= 3 for s in enc.encode(ZH))
    assert enc.vocab_size <= 5
    counts = {c: sum(t.count(c) for t in ZH) for c in enc.itos[2:]}
    assert all(n >= 2 for n in counts.values())


def test_whitespace_tokenizer(tmp_path):
    enc, ids = round_trip("whitespace", EN, tmp_path, lowercase=True)
    assert len(ids[0]) == 5
    assert ids[0][0] == ids[1][0]  # 'the' and 'The' with lowercase
    assert enc.encode(["good bad"]) == [[enc.stoi["good"], enc.stoi["bad"]]]


def test_jieba_tokenizer(tmp_path):
    pytest.importorskip("jieba")
    enc, ids = round_trip("jieba", ZH, tmp_path)
    assert "手机" in enc.stoi and "酒店" in enc.stoi  # words, not characters
    assert len(ids[0]) < len(ZH[0])
    # decoding: Chinese words join without spaces, Latin words and numbers keep one between them
    mixed = ["我用iPhone 12拍照。", "Don't stop the music.", "版本v2.0发布", "这个手机非常好"]
    enc = build_encoder(TokenizerConfig(type="jieba")).fit(mixed)
    assert [enc.decode(enc.encode_text(s)) for s in mixed] == mixed


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_subword_tokenizers(kind, tmp_path):
    pytest.importorskip("tokenizers")
    texts = EN * 5 + ZH * 5
    enc, ids = round_trip(kind, texts, tmp_path, vocab_size=120)
    assert enc.vocab_size <= 120
    assert enc.tok.token_to_id(PAD) == 0 and enc.tok.token_to_id(UNK) == 1
    assert all(ids) and all(0 <= i < enc.vocab_size for s in ids for i in s)
    assert (tmp_path / kind / "tokenizer.json").is_file()
    short = build_encoder(TokenizerConfig(type=kind, vocab_size=120, max_length=2)).fit(texts)
    assert all(len(s) <= 2 for s in short.encode(texts))


def test_pretrained_tokenizer_round_trip(tiny_bert, tmp_path):
    enc = build_encoder(TokenizerConfig(type="pretrained", path=str(tiny_bert), max_length=8))
    ids = enc.encode(EN)
    assert ids[0][0] == enc.tok.cls_token_id and ids[0][-1] == enc.tok.sep_token_id
    assert max(len(s) for s in ids) <= 8
    assert enc.pad_id == enc.tok.pad_token_id == 0
    enc.save(tmp_path / "pre")
    back = load_encoder(tmp_path / "pre")
    assert back.encode(EN) == ids and back.vocab_size == enc.vocab_size


def test_pretrained_tokenizer_errors(tmp_path):
    with pytest.raises(ConfigError, match="preprocessing.tokenizer.path: required"):
        build_encoder(TokenizerConfig(type="pretrained"))
    with pytest.raises(ConfigError, match="not a local folder"):
        build_encoder(TokenizerConfig(type="pretrained", path="some-org/some-model"))
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        build_encoder(TokenizerConfig(type="pretrained", path=str(f)))
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(ConfigError, match="cannot load a tokenizer"):
        build_encoder(TokenizerConfig(type="pretrained", path=str(empty)))


def test_load_encoder_missing_files(tmp_path):
    with pytest.raises(RunError, match="tokenizer files are missing or corrupted"):
        load_encoder(tmp_path / "nothing")
    enc = build_encoder(TokenizerConfig(type="bpe", vocab_size=50)).fit(EN)
    enc.save(tmp_path / "bpe")
    (tmp_path / "bpe" / "tokenizer.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(RunError, match="tokenizer files are missing or corrupted"):
        load_encoder(tmp_path / "bpe")


FR_EN = ["J'aime le thé.", "Êtes-vous prêt ?", "C'est l'été !", "Don't stop-the-music.",
         "Il a dit « bonjour » à 3,5 km.",
         "Aujourd'hui, c'est l'arc-en-ciel (enfin) !", "It's 5 o'clock; we're late: aren't we?"]
ZH_MIXED = ["我爱你。", "你好，世界！", "这个手机非常好", "我用iPhone拍照。"]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
@pytest.mark.parametrize("lowercase", [False, True])
def test_subword_decoding_restores_the_text_as_written(kind, lowercase, tmp_path):
    """Apostrophes, hyphens, French spacing before ? and !, final punctuation and Chinese without spaces all come
    back exactly: decode(encode(s)) == s, before and after a save/load round trip."""
    pytest.importorskip("tokenizers")
    texts = FR_EN + ZH_MIXED
    enc = build_encoder(TokenizerConfig(type=kind, vocab_size=300, lowercase=lowercase),
                        specials=("[BOS]", "[EOS]")).fit(texts * 5)
    enc.save(tmp_path / kind)
    back = load_encoder(tmp_path / kind)
    assert not back.legacy_spacing
    for s in texts:
        want = s.lower() if lowercase else s
        assert enc.decode(enc.encode_text(s)) == want
        assert back.decode(back.encode_text(s)) == want
    ids = enc.encode_text(FR_EN[-2])
    assert all(enc.decode(ids[:k + 1]).startswith(enc.decode(ids[:k])) for k in range(1, len(ids)))
    # unseen words still decode with their spacing (pieces of a word join, words keep one space)
    assert enc.decode(enc.encode_text("le thé d'été")) == "le thé d'été"
    # special tokens are skipped, and a word split into pieces joins without spaces
    bos, eos = enc.bos_id, enc.eos_id
    assert enc.decode([bos, *enc.encode_text("l'été !"), eos]) == "l'été !"
    assert len(enc.encode_text("Aujourd'hui")) > 1
    if not lowercase:  # the Hugging Face export (luban export --format hf) splits and joins the same way
        pytest.importorskip("transformers")
        from luban.models.gpt_hf import hf_tokenizer

        hf = hf_tokenizer(enc)
        for s in texts:
            ids = enc.encode_text(s)
            assert hf(s, add_special_tokens=False)["input_ids"] == ids and hf.decode(ids) == s


def legacy_subword_folder(kind: str, texts: list[str], folder):
    """The files an older luban saved for a bpe/wordpiece tokenizer: BERT pre-tokenizer and normalizer (words split
    on spaces and punctuation, CJK characters apart), decoded with a space between words."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    common = dict(vocab_size=200, special_tokens=[PAD, UNK, "[BOS]", "[EOS]"], show_progress=False)
    if kind == "bpe":
        tok = Tokenizer(models.BPE(unk_token=UNK, end_of_word_suffix="</w>"))
        trainer = trainers.BpeTrainer(end_of_word_suffix="</w>", **common)
        tok.decoder = decoders.BPEDecoder(suffix="</w>")
    else:
        tok = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer = trainers.WordPieceTrainer(**common)
        tok.decoder = decoders.WordPiece()
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    cfg = TokenizerConfig(type=kind, vocab_size=200)
    (folder / "encoder.json").write_text(json.dumps({"type": kind, "config": cfg.model_dump(mode="json"),
                                                     "specials": ["[BOS]", "[EOS]"]}), encoding="utf-8")
    return tok


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_tokenizers_saved_before_spacing_was_kept_still_load_and_decode(kind, tmp_path):
    """A run trained before this change keeps its tokenizer.json: same ids as before, and its decoded text is
    re-joined ("J ' aime le thé ." -> "J'aime le thé.", "我 爱 你 。" -> "我爱你。")."""
    pytest.importorskip("tokenizers")
    texts = ["J'aime le thé.", "C'est l'été.", "Don't stop-the-music.", "我爱你。", "你好，世界！",
             "Il a 3,5 km (environ)."]
    tok = legacy_subword_folder(kind, texts * 5, tmp_path / kind)
    enc = load_encoder(tmp_path / kind)
    assert enc.legacy_spacing and enc.kind == kind
    for s in texts:
        ids = enc.encode_text(s)
        assert ids == tok.encode(s).ids  # the model's ids are unchanged
        assert tok.decode(ids) != s  # what the old decoder printed: "J ' aime le thé .", "我 爱 你 。"
        assert enc.decode(ids) == s
        # streaming decodes growing prefixes: each one's text starts the next one's
        texts_so_far = [enc.decode(ids[:k]) for k in range(1, len(ids) + 1)]
        assert all(b.startswith(a) for a, b in zip(texts_so_far, texts_so_far[1:]))


def test_rejoin_legacy_spacing():
    from luban.data.tokenizers import rejoin_legacy_spacing as rejoin

    assert rejoin("J ' aime le thé .") == "J'aime le thé."
    assert rejoin("Êtes - vous prêt ?") == "Êtes-vous prêt?"  # the old files kept no trace of the French space
    assert rejoin("Don ' t stop - the - music .") == "Don't stop-the-music."
    assert rejoin("你 好 ， 世 界 ！") == "你好，世界！"
    assert rejoin("il a 3 , 5 km ( environ ) .") == "il a 3,5 km (environ)."
    assert rejoin("good service , bad room") == "good service, bad room"
