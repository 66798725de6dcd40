"""Text generation: model-agnostic decoding loops (greedy, sampling, stop strings, streaming)."""

from luban.generation.decoding import (GenerationConfig, GenerationResult, apply_repetition_penalty, generate,
                                       iter_token_ids, stream, top_k_filter, top_p_filter)

__all__ = ["GenerationConfig", "GenerationResult", "apply_repetition_penalty", "generate", "iter_token_ids", "stream",
           "top_k_filter", "top_p_filter"]
