"""Text -> token ids and back. Character (default for Chinese), jieba words, whitespace words, BPE / WordPiece /
byte-level BPE trained on the training split with HF `tokenizers`, or a pretrained HF tokenizer from a local folder
(hub id with allow_download).

All encoders share one small interface: fit(texts), encode(texts) -> list of id lists (truncated to max_length),
encode_text(text) -> ids (whole text), decode(ids) -> text. Each is a luban.processor.Processor: its state (type,
settings, specials) goes into the run's processor.json and its files (vocab.json, tokenizer.json, a pretrained
tokenizer's) into model/<part>/; `encoder_from_state` brings any of them back. save(folder) / load_encoder(folder)
keep an encoder on its own in a folder (encoder.json + the same files). Generative tasks ask for extra special
tokens (BOS, EOS) at build time.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

from luban.config import TokenizerConfig
from luban.errors import ConfigError, RunError
from luban.evaluate.text_metrics import CJK
from luban.processor import Processor

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
META = "encoder.json"
SPACE = "\u2581"  # SentencePiece's word-start mark: where the text had a space
CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"  # CJK symbols and punctuation, full-width forms

# How an older subword tokenizer's "J ' aime le thé ." / "我 爱 你 。" is re-joined: its words were split on spaces
# and punctuation and decoded with a space between every two, so the real spacing is lost; these rules restore
# the usual one (no space inside words with apostrophes or hyphens, before closing punctuation, around CJK).
# Each rule only removes a space next to text already there, so the text of a token prefix stays a prefix of the
# whole text (streaming emits it piece by piece).
_LEGACY_RULES = [
    (re.compile(f" ?([{CJK}{CJK_PUNCT}]) ?"), r"\1"),
    (re.compile(r"(?<=\w) (['’\-])"), r"\1"),
    (re.compile(r"(?<=\w['’\-]) (?=\w)"), ""),
    (re.compile(r"(?<=\d) ?([.,]) ?(?=\d)"), r"\1"),
    (re.compile(r" ([.,!?;:%)\]}])"), r"\1"),
    (re.compile(r"([(\[{]) "), r"\1"),
]


_LATIN_END, _LATIN_START = re.compile(r"[A-Za-z0-9\u00c0-\u024f]$"), re.compile(r"[A-Za-z0-9\u00c0-\u024f]")


def rejoin_legacy_spacing(text: str) -> str:
    for pattern, repl in _LEGACY_RULES:
        text = pattern.sub(repl, text)
    return text


class TextEncoder(Processor):
    kind = ""

    def __init__(self, cfg: TokenizerConfig, specials: tuple[str, ...] = ()):
        self.cfg = cfg
        self.max_length = cfg.max_length
        self.specials = tuple(specials)  # extra special tokens after PAD and UNK (e.g. BOS, EOS)

    pad_id = 0

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def fit(self, texts: list[str]) -> "TextEncoder":
        return self

    def encode(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_text(self, text: str) -> list[int]:
        """The whole text as ids: no truncation, no special tokens added."""
        raise NotImplementedError

    def decode(self, ids, skip_special: bool = True) -> str:
        raise NotImplementedError

    def token_id(self, token: str) -> int | None:
        raise NotImplementedError

    @property
    def bos_id(self) -> int | None:
        return self.token_id(BOS)

    @property
    def eos_id(self) -> int | None:
        return self.token_id(EOS)

    def state(self) -> dict:
        return {"type": self.kind, "config": self.cfg.model_dump(mode="json"), "specials": list(self.specials)}

    def save_assets(self, folder: Path, name: str) -> list[str]:
        """The encoder's files into folder/name/ (vocab.json, tokenizer.json...): their paths under folder."""
        (folder / name).mkdir(parents=True, exist_ok=True)
        return [f"{name}/{f}" for f in self.write_files(folder / name)]

    def write_files(self, folder: Path) -> list[str]:
        return []

    @classmethod
    def from_state(cls, state: dict, folder: Path, name: str) -> "TextEncoder":
        return encoder_from_state(state, folder / name)

    def save(self, folder: Path) -> None:
        """This encoder alone in `folder`: encoder.json (its state) and its files."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).write_text(json.dumps(self.state(), ensure_ascii=False, indent=1), encoding="utf-8")
        self.write_files(folder)


class VocabEncoder(TextEncoder):
    """A counted vocabulary over pieces produced by `split` (characters, jieba words, whitespace words)."""

    joiner = ""  # how decode() puts pieces back together

    def __init__(self, cfg: TokenizerConfig, specials: tuple[str, ...] = ()):
        super().__init__(cfg, specials)
        self.itos: list[str] = [PAD, UNK, *self.specials]
        self.stoi: dict[str, int] = {}

    def split(self, text: str) -> list[str]:
        raise NotImplementedError

    def _pieces(self, text: str) -> list[str]:
        return self.split(text.lower() if self.cfg.lowercase else text)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def fit(self, texts):
        counts = Counter()
        for t in texts:
            counts.update(self._pieces(t))
        head = [PAD, UNK, *self.specials]
        kept = [w for w, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
                if c >= self.cfg.min_freq and w not in head]
        self.itos = head + kept[: max(0, self.cfg.vocab_size - len(head))]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        return self

    def encode(self, texts):
        get, n = self.stoi.get, self.max_length
        return [[get(p, 1) for p in self._pieces(t)[:n]] or [1] for t in texts]

    def encode_text(self, text):
        get = self.stoi.get
        return [get(p, 1) for p in self._pieces(text)]

    def decode(self, ids, skip_special=True):
        n_special = 2 + len(self.specials)
        itos = self.itos
        return self.join([itos[i] for i in (int(i) for i in ids)
                          if 0 <= i < len(itos) and not (skip_special and i < n_special and i != 1)])

    def join(self, pieces: list[str]) -> str:
        return self.joiner.join(pieces)

    def token_id(self, token):
        return self.stoi.get(token) if token in (PAD, UNK, *self.specials) else None

    def write_files(self, folder):
        (folder / "vocab.json").write_text(json.dumps(self.itos, ensure_ascii=False), encoding="utf-8")
        return ["vocab.json"]

    def load_state(self, folder: Path):
        self.itos = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        self.stoi = {w: i for i, w in enumerate(self.itos)}


class CharEncoder(VocabEncoder):
    kind = "char"

    def split(self, text):
        return list(text)

    def encode(self, texts):
        # only the first max_length characters become ids, so only they are split (a 10 MB row was 3.5M strings to
        # keep 64). Lowercasing turns a character into one or more, in context only for a final sigma: a head with
        # a Σ is lowered with the rest of its text, as before.
        n, lower = self.max_length, self.cfg.lowercase
        if n is None:
            return super().encode(texts)
        return super().encode([t if len(t) <= n or (lower and "Σ" in t[:n]) else t[:n] for t in texts])


class WhitespaceEncoder(VocabEncoder):
    kind = "whitespace"
    joiner = " "

    def split(self, text):
        return text.split()


class JiebaEncoder(VocabEncoder):
    kind = "jieba"

    def __init__(self, cfg, specials=()):
        super().__init__(cfg, specials)
        try:
            import jieba
        except ImportError:
            raise ConfigError("preprocessing.tokenizer.type jieba needs jieba: pip install 'luban[text]'") from None
        jieba.setLogLevel(60)
        self._cut = jieba.lcut

    def split(self, text):
        return [w for w in self._cut(text) if not w.isspace()]

    def join(self, pieces):
        """Words join without spaces (Chinese), except two Latin words or numbers: jieba keeps a run of letters
        and digits whole, so two of them side by side were apart in the text ("don't stop", "iPhone 12")."""
        out = []
        for w in pieces:
            if out and _LATIN_END.search(out[-1]) and _LATIN_START.match(w):
                out.append(" ")
            out.append(w)
        return "".join(out)


class SubwordEncoder(TextEncoder):
    """Subwords trained on the training split with HF `tokenizers`: BPE or WordPiece over words that carry their
    spacing (SentencePiece's metaspace; punctuation and CJK characters split apart), or GPT-2-style byte-level BPE.
    Both keep spacing, so decode() gives back normal text ("J'aime le thé.", "我爱你。"), not "J ' aime le thé .".

    Tokenizers trained before spacing was kept (BERT pre-tokenizer, issue 17) still load and decode in old runs,
    their text re-joined by `rejoin_legacy_spacing` (best effort: those files never recorded the spacing)."""

    def __init__(self, cfg, kind: str, specials: tuple[str, ...] = ()):
        super().__init__(cfg, specials)
        self.kind = kind
        self.tok = None
        self.legacy_spacing = False  # a tokenizer.json from before spacing was kept (BertPreTokenizer)

    @property
    def vocab_size(self):
        return self.tok.get_vocab_size()

    def fit(self, texts):
        from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

        specials = [PAD, UNK, *self.specials]
        common = dict(vocab_size=self.cfg.vocab_size, min_frequency=self.cfg.min_freq, special_tokens=specials,
                      show_progress=False)
        if self.kind == "byte_bpe":
            tok = Tokenizer(models.BPE())
            trainer = trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common)
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            if self.cfg.lowercase:
                tok.normalizer = normalizers.Lowercase()
        else:
            # a word starts with SPACE where the text had a space; decoding turns it back into one, so the text
            # comes back as written (no spaces around apostrophes, hyphens, punctuation or CJK characters)
            metaspace = decoders.Metaspace(replacement=SPACE, prepend_scheme="first")
            if self.kind == "bpe":
                tok = Tokenizer(models.BPE(unk_token=UNK))
                trainer = trainers.BpeTrainer(**common)
                tok.decoder = metaspace
            else:
                tok = Tokenizer(models.WordPiece(unk_token=UNK))
                trainer = trainers.WordPieceTrainer(**common)
                tok.decoder = decoders.Sequence([decoders.Replace("##", ""), metaspace])
            tok.normalizer = normalizers.Sequence(
                [normalizers.Replace(Regex(r"\s"), " ")] + ([normalizers.Lowercase()] if self.cfg.lowercase else []))
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first", split=True),
                pre_tokenizers.Punctuation(behavior="isolated"),
                pre_tokenizers.Split(Regex(f"[{CJK}]"), behavior="isolated")])  # one piece per CJK character
        tok.train_from_iterator(texts, trainer=trainer)
        self.tok = tok
        return self

    def encode(self, texts):
        n = self.max_length
        return [e.ids[:n] or [1] for e in self.tok.encode_batch(texts)]

    def encode_text(self, text):
        return self.tok.encode(text).ids

    def decode(self, ids, skip_special=True):
        text = self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)
        return rejoin_legacy_spacing(text) if self.legacy_spacing else text

    def token_id(self, token):
        return self.tok.token_to_id(token) if token in (PAD, UNK, *self.specials) else None

    def write_files(self, folder):
        self.tok.save(str(folder / "tokenizer.json"))
        return ["tokenizer.json"]

    def load_state(self, folder):
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.legacy_spacing = type(self.tok.pre_tokenizer).__name__ == "BertPreTokenizer"


def resolve_pretrained(path: str, allow_download: bool, what: str) -> str:
    """A local folder, a starter-catalog name (luban.hub.catalog: pulled into the cache, or 'starter-minilm'), or
    (with allow_download) a hub id."""
    from luban.hub.catalog import resolve

    local = resolve(path, what)
    if local is not None:
        return local
    if Path(path).expanduser().is_dir():  # ~/.cache/luban/models/NAME in a config
        return str(Path(path).expanduser())
    if Path(path).exists():
        raise ConfigError(f"{what}: {path} is a file; expected a model folder (config.json, weights, tokenizer)")
    if not allow_download:
        raise ConfigError(f"{what}: {path!r} is not a local folder; to fetch it from the hub set "
                          "allow_download: true (luban never goes online otherwise)")
    return path


class PretrainedEncoder(TextEncoder):
    kind = "pretrained"

    def __init__(self, cfg, source: str | None = None, trust_remote_code: bool = False):
        super().__init__(cfg)
        self.trust_remote_code = trust_remote_code
        self.tok = None
        if source is not None:
            self._load(source, allow_download=cfg.allow_download)

    def _load(self, source: str, allow_download: bool):
        if not allow_download:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        try:
            self.tok = AutoTokenizer.from_pretrained(source, local_files_only=not allow_download,
                                                     trust_remote_code=self.trust_remote_code)
        except (OSError, ValueError) as e:
            raise ConfigError(f"preprocessing.tokenizer: cannot load a tokenizer from {source}: {e}") from None
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token or self.tok.unk_token
        self.pad_id = self.tok.pad_token_id

    @property
    def vocab_size(self):
        return len(self.tok)

    def encode(self, texts):
        return self.tok(list(texts), truncation=True, max_length=self.max_length)["input_ids"]

    def encode_text(self, text):
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids, skip_special=True):
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_special)

    def token_id(self, token):
        return None

    @property
    def prefix_ids(self) -> list[int]:
        """What the tokenizer puts before a text (e.g. LLaMA's BOS; nothing for GPT-2)."""
        with_special = self.tok("a")["input_ids"]
        plain = self.tok("a", add_special_tokens=False)["input_ids"]
        n = len(with_special) - len(plain)
        return with_special[:n] if n > 0 and with_special[n:n + len(plain)] == plain else []

    @property
    def bos_id(self):
        return self.tok.bos_token_id

    @property
    def eos_id(self):
        return self.tok.eos_token_id

    def write_files(self, folder):
        return [Path(f).name for f in self.tok.save_pretrained(str(folder))]

    def load_state(self, folder):
        self._load(str(folder), allow_download=False)


def build_encoder(cfg: TokenizerConfig, pretrained_source: str | None = None,
                  trust_remote_code: bool = False, specials: tuple[str, ...] = ()) -> TextEncoder:
    """`pretrained_source` is the model folder when the model is pretrained and the tokenizer names no path;
    `specials` are extra tokens a task needs in a trained vocabulary (a pretrained tokenizer brings its own)."""
    if cfg.type == "char":
        return CharEncoder(cfg, specials)
    if cfg.type == "whitespace":
        return WhitespaceEncoder(cfg, specials)
    if cfg.type == "jieba":
        return JiebaEncoder(cfg, specials)
    if cfg.type in ("bpe", "wordpiece", "byte_bpe"):
        return SubwordEncoder(cfg, cfg.type, specials)
    source = cfg.path or pretrained_source
    if source is None:
        raise ConfigError("preprocessing.tokenizer.path: required for a pretrained tokenizer "
                          "(a local folder or, with allow_download, a hub id)")
    return PretrainedEncoder(cfg, resolve_pretrained(source, cfg.allow_download, "preprocessing.tokenizer.path"),
                             trust_remote_code)


def load_encoder(folder: Path) -> TextEncoder:
    """An encoder kept alone in `folder` (TextEncoder.save)."""
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RunError(f"{folder}: tokenizer files are missing or corrupted ({e})") from None
    return encoder_from_state(meta, folder)


def encoder_from_state(meta: dict, folder: Path) -> TextEncoder:
    """The encoder of state `meta` (TextEncoder.state), its files read from `folder`."""
    try:
        cfg = TokenizerConfig.model_validate(meta["config"])
    except (ValueError, KeyError, TypeError) as e:
        raise RunError(f"{folder}: tokenizer files are missing or corrupted ({e})") from None
    kinds = {"char": CharEncoder, "whitespace": WhitespaceEncoder, "jieba": JiebaEncoder,
             "pretrained": PretrainedEncoder}
    subword = ("bpe", "wordpiece", "byte_bpe")
    if meta["type"] not in kinds and meta["type"] not in subword:
        raise RunError(f"{folder}: unknown tokenizer type {meta['type']!r} in {META}")
    specials = tuple(meta.get("specials", ()))
    if meta["type"] in subword:
        enc = SubwordEncoder(cfg, meta["type"], specials)
    elif meta["type"] == "pretrained":
        enc = PretrainedEncoder(cfg)
    else:
        enc = kinds[meta["type"]](cfg, specials)
    try:
        enc.load_state(folder)
    except Exception as e:  # json, HF tokenizers and transformers each raise their own types
        raise RunError(f"{folder}: tokenizer files are missing or corrupted ({type(e).__name__}: {e})") from None
    return enc
