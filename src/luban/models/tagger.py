"""Sequence labellers: one score per (token, tag) from a BiLSTM over token embeddings or a pretrained transformer
encoder (each word read at its first subword), optionally decoded with a linear-chain CRF (pytorch-crf).

Every tagger takes (ids, mask, first): ids / mask are the encoder's input (the tokens themselves for the BiLSTM,
subwords for a pretrained encoder) and first[b, w] is the input position of word w; forward returns the emission
scores [batch, words, tags] read at those positions. The head (loss, CRF decoding) also takes word_mask, which marks
real words; an exported model (ONNX) is the forward alone, decoded by the head in luban's predictor.
"""

from __future__ import annotations

import torch
from torch import nn

IGNORE = -100


def at_words(h: torch.Tensor, first: torch.Tensor) -> torch.Tensor:
    """The hidden states [batch, words, dim] at each word's input position."""
    return h.gather(1, first.unsqueeze(-1).expand(-1, -1, h.shape[-1]))


class TagHead(nn.Module):
    """Emissions -> loss and best tag paths; a CRF learns which tag may follow which."""

    def __init__(self, num_tags: int, crf: bool):
        super().__init__()
        self.crf = None
        if crf:
            from torchcrf import CRF

            self.crf = CRF(num_tags, batch_first=True)

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, word_mask: torch.Tensor) -> torch.Tensor:
        """Mean negative log-likelihood per sequence (CRF) or per token (softmax)."""
        emissions = emissions.float()
        if self.crf is None:
            return nn.functional.cross_entropy(emissions.reshape(-1, emissions.shape[-1]),
                                               tags.masked_fill(~word_mask, IGNORE).reshape(-1),
                                               ignore_index=IGNORE)
        return -self.crf(emissions, tags.clamp(min=0), mask=word_mask, reduction="mean")

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, word_mask: torch.Tensor) -> list[list[int]]:
        emissions = emissions.float()
        if self.crf is None:
            best = emissions.argmax(-1)
            return [row[: int(n)].tolist() for row, n in zip(best, word_mask.sum(1))]
        return self.crf.decode(emissions, mask=word_mask)


BIGRAM_PRIME = 1_000_003


class BiLSTMTagger(nn.Module):
    """Token embeddings (+ hashed embeddings of the bigrams each token forms with its left and right neighbours,
    the classic feature for Chinese segmentation and NER) -> BiLSTM -> tag scores."""

    def __init__(self, vocab_size: int, num_tags: int, pad_id: int, embedding_dim: int = 128,
                 hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.3, crf: bool = True,
                 bigram_buckets: int = 0, bigram_dim: int = 64):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.bigram = nn.Embedding(bigram_buckets, bigram_dim) if bigram_buckets else None
        width = embedding_dim + (2 * bigram_dim if bigram_buckets else 0)
        self.lstm = nn.LSTM(width, hidden_size // 2, num_layers=num_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if num_layers > 1 else 0.0)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_tags)
        self.head = TagHead(num_tags, crf)

    def bigram_ids(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bucket of (previous, this) and of (this, next) token pair; the padding id stands beyond the ends."""
        pad = torch.full_like(ids[:, :1], self.pad_id)
        left, right = torch.cat([pad, ids[:, :-1]], 1), torch.cat([ids[:, 1:], pad], 1)
        n = self.bigram.num_embeddings
        return (left * BIGRAM_PRIME + ids) % n, (ids * BIGRAM_PRIME + right) % n

    def forward(self, ids, mask, first):
        x = self.embed(ids)
        if self.bigram is not None:
            lb, rb = self.bigram_ids(ids)
            x = torch.cat([x, self.bigram(lb), self.bigram(rb)], -1)
        x = self.drop(x)
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h, _ = self.lstm(packed)
        h, _ = nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=ids.shape[1])
        return self.out(self.drop(at_words(h, first)))


class PretrainedTagger(nn.Module):
    def __init__(self, encoder, num_tags: int, dropout: float = 0.1, crf: bool = True):
        super().__init__()
        self.backbone = encoder
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(encoder.config.hidden_size, num_tags)
        self.head = TagHead(num_tags, crf)

    def forward(self, ids, mask, first):
        h = self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.out(self.drop(at_words(h, first)))


def build_bilstm(cfg, *, vocab_size: int, num_tags: int, pad_id: int, crf: bool, **_) -> BiLSTMTagger:
    """The registry's builder for BiLSTMTaggerConfig (luban.models.tagger_config)."""
    return BiLSTMTagger(vocab_size, num_tags, pad_id, cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, cfg.dropout,
                        crf, cfg.bigram_buckets, cfg.bigram_dim)


def build_pretrained(cfg, *, num_tags: int, crf: bool, backbone_dir: str | None = None, **_) -> PretrainedTagger:
    """The registry's builder for PretrainedConfig in token classification (`backbone_dir`: a run's, no weights)."""
    from luban.data.tokenizers import resolve_pretrained
    from luban.models.pretrained import backbone_from_config, load_backbone

    if backbone_dir is not None:
        return PretrainedTagger(backbone_from_config(backbone_dir), num_tags, cfg.dropout, crf)
    source = resolve_pretrained(cfg.path, cfg.allow_download, "model.path")
    return PretrainedTagger(load_backbone(source, cfg.allow_download, cfg.trust_remote_code), num_tags, cfg.dropout,
                            crf)
