"""The config of luban.models.gbdt (torch-free: validating a config imports no model code)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from luban.config_base import ModelSection
from luban.models.registry import register_model


@register_model(tasks=("tabular_regression", "tabular_classification"),
                default_for=("tabular_regression", "tabular_classification"), builder="luban.models.gbdt:build")
class GBDTConfig(ModelSection):
    """Gradient-boosted decision trees (LightGBM): the model practitioners reach for first on a table. Trained by
    LightGBM itself (not by gradient steps in luban's engine), stopped early on the validation split, saved in
    LightGBM's text model format (model/gbdt.txt)."""

    type: Literal["gbdt"] = "gbdt"
    trained_by_library: ClassVar[bool] = True  # the task fits it with its own library (TabularTask.fit_model)
    n_estimators: int = Field(1000, gt=0, description="the most boosting rounds (early stopping usually ends "
                              "sooner)")
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(31, ge=2, description="leaves per tree (LightGBM grows trees leaf-wise)")
    max_depth: int = Field(-1, ge=-1, description="-1: no depth limit (num_leaves bounds a tree)")
    min_child_samples: int = Field(20, ge=1, description="rows a leaf must hold")
    feature_fraction: float = Field(0.9, gt=0, le=1, description="features sampled per tree")
    bagging_fraction: float = Field(1.0, gt=0, le=1, description="rows sampled per tree (every bagging_freq "
                                    "rounds)")
    bagging_freq: int = Field(0, ge=0, description="0: no row bagging")
    lambda_l1: float = Field(0.0, ge=0, description="L1 regularization of leaf values")
    lambda_l2: float = Field(0.0, ge=0, description="L2 regularization of leaf values")
    min_split_gain: float = Field(0.0, ge=0)
    early_stopping_rounds: int = Field(50, gt=0, description="stop after this many rounds without a better "
                                       "validation loss; the best round is kept")
    categorical: Literal["native", "codes"] = Field(
        "native", description="native: data.columns.categorical are LightGBM categorical features (split by "
        "category sets); codes: their integer codes are split like numbers")
