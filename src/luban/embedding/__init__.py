"""Text embeddings: the encoder API (`load_encoder`, `Encoder`) that the text_embedding task, `luban embed`,
`POST /v1/embeddings` and the knowledge base share. See luban.embedding.encoder for the contract."""

from luban.embedding.encoder import Encoder, EmbeddingSpec, load_encoder

__all__ = ["Encoder", "EmbeddingSpec", "load_encoder"]
