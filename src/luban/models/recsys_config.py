"""The config of luban.models.recsys (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from luban.config_base import ModelSection, divisible
from luban.models.registry import register_model


class RecommenderSection(ModelSection):
    """A recommender's config: what the recommendation task asks of the model without naming its type."""

    predicts_ratings: ClassVar[bool] = False  # explicit feedback: ratings, scored by rmse (else implicit, ndcg)
    sequential: ClassVar[bool] = False  # trained on next-item windows of each user's history
    reads_features: ClassVar[bool] = False  # reads recommendation.user_features / item_features
    computed: ClassVar[bool] = False  # computed from the interactions, not trained: no training loop


@register_model(tasks=("recommendation",), default_for=("recommendation",), builder="luban.models.recsys:build_sasrec")
class SASRecConfig(RecommenderSection):
    """SASRec: a causal self-attention encoder over each user's recent items predicts the next item."""

    type: Literal["sasrec"] = "sasrec"
    sequential: ClassVar[bool] = True
    max_length: int = Field(50, gt=1, description="most recent items the model reads")
    hidden: int = Field(64, gt=0)
    layers: int = Field(2, gt=0)
    heads: int = Field(1, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    loss: Literal["ce", "bce"] = Field("ce", description="ce: softmax over the whole catalogue at every position; "
                                       "bce: the next item against sampled negatives (recommendation.negatives)")

    @model_validator(mode="after")
    def _heads_divide(self):
        divisible(self, "hidden", "heads")
        return self


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_gru4rec")
class GRU4RecConfig(RecommenderSection):
    """GRU4Rec: a GRU over each user's recent items predicts the next item (same windows and losses as SASRec)."""

    type: Literal["gru4rec"] = "gru4rec"
    sequential: ClassVar[bool] = True
    max_length: int = Field(50, gt=1, description="most recent items the model reads")
    hidden: int = Field(64, gt=0)
    layers: int = Field(1, gt=0)
    dropout: float = Field(0.2, ge=0, lt=1)
    loss: Literal["ce", "bce"] = Field("ce", description="ce: softmax over the whole catalogue at every position; "
                                       "bce: the next item against sampled negatives (recommendation.negatives)")


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_bpr")
class BPRConfig(RecommenderSection):
    """BPR matrix factorization: user/item factors trained to rank each positive above sampled negatives."""

    type: Literal["bpr"] = "bpr"
    factors: int = Field(64, gt=0)
    item_bias: bool = Field(True, description="a learned popularity term per item")
    init_std: float = Field(0.1, gt=0, description="standard deviation of the initial factors")


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_itemknn")
class ItemKNNConfig(RecommenderSection):
    """Item-based collaborative filtering: cosine similarity between items' user vectors, top neighbours kept."""

    type: Literal["itemknn"] = "itemknn"
    computed: ClassVar[bool] = True
    neighbors: int = Field(100, gt=0, description="most similar items kept per item")
    shrink: float = Field(0.0, ge=0, description="added to the cosine denominator (damps rare co-occurrences)")


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_popularity")
class PopularityConfig(RecommenderSection):
    """Recommend the items with the most training interactions (the same list for everyone)."""

    type: Literal["popularity"] = "popularity"
    computed: ClassVar[bool] = True


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_ncf")
class NCFConfig(RecommenderSection):
    """Neural collaborative filtering (NeuMF): a GMF branch and an MLP branch over user/item embeddings,
    trained with binary cross-entropy against sampled negatives."""

    type: Literal["ncf"] = "ncf"
    gmf_dim: int = Field(32, gt=0)
    mlp_dims: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64, 32, 16],
                                                        description="MLP layer widths; the first is 2x the MLP "
                                                        "embedding size")
    dropout: float = Field(0.0, ge=0, lt=1)


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_two_tower")
class TwoTowerConfig(RecommenderSection):
    """A user tower and an item tower (id embedding + feature embeddings -> MLP), scored by cosine / temperature
    against the positive and sampled negatives. Ids are dropped at random in training so the feature path alone
    scores new users and items."""

    type: Literal["two_tower"] = "two_tower"
    reads_features: ClassVar[bool] = True
    dim: int = Field(64, gt=0, description="output vector size of both towers")
    hidden: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [128])
    feature_dim: int = Field(16, gt=0, description="embedding size of each feature column")
    id_embeddings: bool = Field(True, description="false: features only (a pure content model)")
    id_dropout: float = Field(0.2, ge=0, lt=1, description="training: chance an id is replaced by 'unknown'")
    temperature: float = Field(0.1, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)


@register_model(tasks=("recommendation",), builder="luban.models.recsys:build_explicit_mf")
class ExplicitMFConfig(RecommenderSection):
    """Rating prediction: global mean + user bias + item bias + user . item factors, trained on squared error."""

    type: Literal["mf_explicit"] = "mf_explicit"
    predicts_ratings: ClassVar[bool] = True
    factors: int = Field(32, gt=0)
    init_std: float = Field(0.05, gt=0)
    reg: float = Field(0.05, ge=0, description="L2 penalty on each rating's user/item factors and biases")
