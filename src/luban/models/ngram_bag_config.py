"""The config of luban.models.ngram_bag (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("text_classification",), builder="luban.models.ngram_bag:build")
class NgramBagConfig(ModelSection):
    """Bag of weighted n-grams: linear (NBSVM-style, embedding_dim 0) or fastText-style (embedding_dim > 0)."""

    type: Literal["ngram_bag"] = "ngram_bag"
    ngrams: ClassVar[bool] = True
    # its ops are small gathers and sorts of one batch's n-grams: a second intra-op thread measured 18x slower on a
    # shared 2-core machine (179 vs 3,248 samples/s on SST-2), so it trains on one unless trainer.num_threads says
    default_threads: ClassVar[int | None] = 1
    # its recipe where a config leaves the trainer unset: the one measured on ChnSentiCorp (examples/chnsenticorp.yaml)
    # — a sparse linear model wants a far larger rate than the task-wide AdamW 1e-3, which left SST-2 at 0.65 test
    # accuracy on 2,000 rows after 10 epochs, still improving (benchmarks/tune.py)
    trainer_defaults: ClassVar[dict] = {"epochs": 15, "batch_size": 64, "optimizer": "adam", "lr": 0.025,
                                        "weight_decay": 1.4e-5, "scheduler": "linear", "grad_clip": None}
    analyzer: Literal["auto", "char", "word", "jieba"] = Field(
        "auto", description="n-grams of characters, whitespace words or jieba words; auto: characters for "
        "Chinese, Japanese, Thai and other scripts written without spaces, words otherwise (from the training "
        "texts, as the TF-IDF baseline decides)")
    ngram_range: tuple[Annotated[int, Field(gt=0, le=8)], Annotated[int, Field(gt=0, le=8)]] | None = Field(
        None, description="[min, max] n-gram length; null: 1-4 for characters, 1-3 for words")
    weighting: Literal["nb", "tfidf", "binary"] = Field("nb", description="nb: Naive-Bayes log-count ratio")
    min_df: int = Field(1, ge=1, description="drop n-grams seen in fewer training texts")
    lowercase: bool = True
    nb_alpha: float = Field(1.0, gt=0, description="smoothing of the Naive-Bayes counts")
    max_features: int | None = Field(None, gt=0, description="keep only the N most frequent n-grams (exact "
                                     "vocabulary); null: all that pass min_df")
    hash_buckets: int = Field(0, ge=0, description="N > 0: hash n-grams into N rows (bounded memory, no "
                              "vocabulary; e.g. 1048576 for millions of n-grams); 0: an exact vocabulary")
    embedding_dim: int = Field(0, ge=0, description="0: a linear model over the n-grams; N: fastText-style")
    dropout: float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _range_ordered(self):
        if self.ngram_range is not None and self.ngram_range[0] > self.ngram_range[1]:
            raise ValueError(f"ngram_range {list(self.ngram_range)}: the first must be <= the second")
        return self
