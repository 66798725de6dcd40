"""JSON-constrained decoding: at every step only the tokens that keep the text a prefix of a JSON value matching a
schema may be chosen, so a generation that ends by itself is valid JSON (OpenAI's `response_format` json_object /
json_schema, tool calls forced by `tool_choice`, `luban generate --json`).

The grammar engine is llguidance (the one vLLM and SGLang use): a JSON schema compiles to a grammar, and a matcher per
sequence gives the allowed-token bitmask for the next step and consumes the chosen token. It works on the model's
own tokenizer — a Hugging Face fast tokenizer or luban's trained subword tokenizer as it is, other tokenizers
through each token's bytes — so any token boundary is allowed where the bytes fit.

The JSON is written in one layout — `{"key": value, "other": [1, 2]}` (json.dumps' separators, no other whitespace)
— so a model cannot spend its tokens on blank space and a schema-bound object always ends. Once the value is
complete the sequence ends (finish "eos", OpenAI's "stop") without waiting for the model's end token.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

import numpy as np
import torch

from luban.errors import LubanError

ANY_OBJECT = {"type": "object"}  # OpenAI's {"type": "json_object"}: some JSON object
LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _lib():
    try:
        import llguidance
    except ImportError:
        raise LubanError("JSON-constrained decoding needs llguidance: pip install 'luban[text]'") from None
    return llguidance


def _check_meta(schema: dict) -> None:
    """The schema against its own metaschema (jsonschema, where installed): a misspelt type is an error here."""
    try:
        import jsonschema
    except ImportError:
        return
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise ValueError(f"{e.message}" + (f" (at {where})" if where else "")) from None


@functools.lru_cache(maxsize=256)
def _compile(text: str) -> str:
    lib = _lib()
    schema = json.loads(text)
    _check_meta(schema)
    try:
        grammar = lib.LLMatcher.grammar_from_json_schema(schema, overrides=LAYOUT)
    except ValueError as e:
        raise ValueError(str(e)) from None
    failed, messages = lib.LLMatcher.validate_grammar_with_warnings(grammar)
    if failed:
        raise ValueError(messages[0] if messages else "the schema does not compile")
    return grammar


def compile_schema(schema) -> str:
    """The llguidance grammar of a JSON schema (a dict); ValueError saying what is wrong with it."""
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON schema is a JSON object, found {type(schema).__name__}")
    try:
        text = json.dumps(schema)  # key order kept: properties are written in the schema's order
    except (TypeError, ValueError) as e:
        raise ValueError(f"the schema is not JSON: {e}") from None
    return _compile(text)


class JsonConstraint:
    """One sequence's place in the grammar: mask(logits) keeps the tokens allowed next, advance(token) takes the
    chosen one, complete says the JSON value is finished (nothing but an end token may follow)."""

    def __init__(self, matcher, vocab: int):
        self.matcher, self.vocab = matcher, vocab

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """1-D logits with the tokens the grammar does not allow next set to -inf. On the CPU in numpy (one
        thread: torch's thread pool costs more than the work on a busy machine)."""
        bits = np.unpackbits(np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8), bitorder="little")
        n = min(self.vocab, logits.shape[-1], len(bits))
        allow = np.zeros(logits.shape[-1], dtype=bool)
        allow[:n] = bits[:n]
        if not allow.any():
            raise LubanError("JSON decoding: no token of the vocabulary can continue the JSON"
                             + (f" ({self.matcher.get_error()})" if self.matcher.is_error() else ""))
        if logits.device.type == "cpu":
            return torch.from_numpy(np.where(allow, logits.detach().float().numpy(), np.float32("-inf")))
        return logits.masked_fill(~torch.from_numpy(allow).to(logits.device), float("-inf"))

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(int(token)):
            raise LubanError(f"JSON decoding: token {token} does not continue the JSON ({self.matcher.get_error()})")

    @property
    def complete(self) -> bool:
        return self.matcher.is_stopped()


class Grammars:
    """JSON constraints for one tokenizer: the llguidance tokenizer built once, on first use (about a second for a
    150k-token vocabulary), and each schema compiled once.

    `encoder`: luban's TextEncoder (its `tok`: a Hugging Face tokenizer or a `tokenizers.Tokenizer`, else its
    tokens' bytes from `pieces(ids)`); `eos`: the end-of-sequence ids the grammar allows once the JSON is complete."""

    def __init__(self, encoder, eos: Sequence[int] | int | None,
                 pieces: Callable[[list[int]], list[tuple[str, bytes]]], vocab: int | None = None):
        self.encoder, self.pieces = encoder, pieces
        self.eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.vocab = vocab
        self._tokenizer = None

    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = self._build()
        return self._tokenizer

    def _build(self):
        lib = _lib()
        tok = getattr(self.encoder, "tok", None)
        eos = self.eos or None
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None or type(tok).__name__ == "Tokenizer":
            from copy import copy

            raw = copy(backend if backend is not None else tok)
            raw.no_padding()
            raw.no_truncation()
            return lib.LLTokenizer(raw.to_str(), eos_token=eos)
        n = self.encoder.vocab_size
        tokens = [raw for _, raw in self.pieces(list(range(n)))]
        specials = sorted({i for i in (self.eos + [getattr(self.encoder, "pad_id", None),
                                                   self.encoder.bos_id]) if i is not None})
        encoder = self.encoder

        class _Tokens:  # what llguidance.TokenizerWrapper reads
            eos_token_id = (self.eos or [0])[0]
            bos_token_id = encoder.bos_id
            special_token_ids = specials

            def __init__(self):
                self.tokens = tokens

            def __call__(self, text: str) -> list[int]:
                return encoder.encode_text(text)

        return lib.LLTokenizer(lib.TokenizerWrapper(_Tokens()), eos_token=eos)

    def check(self, schema) -> None:
        """ValueError when the schema does not compile (before any decoding starts)."""
        compile_schema(schema)

    def constraint(self, schema) -> JsonConstraint:
        """A fresh matcher for one sequence."""
        lib = _lib()
        tok = self.tokenizer()
        matcher = lib.LLMatcher(tok, compile_schema(schema), log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return JsonConstraint(matcher, tok.vocab_size if self.vocab is None else min(tok.vocab_size, self.vocab))
