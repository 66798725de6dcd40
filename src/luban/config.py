"""The run config: pydantic models for every section, loading, --set overrides and readable errors.

Every section forbids unknown keys, so a typo is an error naming its YAML path, not a silently ignored setting.
"""

from __future__ import annotations

import copy
import difflib
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union, get_args

import yaml
from pydantic import (BaseModel, Field, ValidationError, create_model, field_validator,
                      model_validator)

from luban.config_base import ColumnRef, Section, TokenizerConfig
from luban.errors import ConfigError
from luban.models.registry import models, models_for

# ----------------------------------------------------------------------------------------------- data


class ColumnsConfig(Section):
    text: ColumnRef | None = Field(None, description="text column (text tasks)")
    label: ColumnRef | None = Field(None, description="label / target column")
    features: list[ColumnRef] | None = Field(None, description="tabular feature columns; default: all but label")
    categorical: list[ColumnRef] = Field(default_factory=list, description="tabular columns to embed as categories")
    image: ColumnRef | None = Field(None, description="image path column (vision tasks given a CSV/JSONL)")
    prompt: ColumnRef | None = Field(None, description="text generation SFT: the prompt column (loss masked)")
    response: ColumnRef | None = Field(None, description="text generation SFT: the response column (trained on)")
    messages: ColumnRef | None = Field(None, description="text generation SFT: a chat `messages` list column "
                                       "([{role, content}, ...]; trained on the assistant turns)")
    tokens: ColumnRef | None = Field(None, description="token classification: the tokens column (a list, or a "
                                    "space-separated string)")
    tags: ColumnRef | None = Field(None, description="token classification: one tag per token (a list, or a "
                                  "space-separated string)")
    chosen: ColumnRef | None = Field(None, description="text generation preference training (DPO): the preferred "
                                     "reply to the prompt / messages")
    rejected: ColumnRef | None = Field(None, description="text generation preference training: the dispreferred "
                                       "reply")
    source: ColumnRef | None = Field(None, description="seq2seq: the source text column (document to summarize)")
    target: ColumnRef | None = Field(None, description="seq2seq: the target text column (translation, summary)")
    audio: ColumnRef | None = Field(None, description="audio file path column (speech tasks given a CSV/JSONL)")
    user: ColumnRef | None = Field(None, description="recommendation: the user id column (default: user, user_id, "
                                   "userId, ... or column 0 without a header)")
    item: ColumnRef | None = Field(None, description="recommendation: the item id column (default: item, item_id, "
                                   "movieId, ... or column 1 without a header)")
    rating: ColumnRef | None = Field(None, description="recommendation: the rating column (explicit feedback, or "
                                     "binarized with recommendation.rating_threshold)")
    timestamp: ColumnRef | None = Field(None, description="recommendation: the time column (unix seconds or a "
                                        "date); orders each user's history")
    query: ColumnRef | None = Field(None, description="text embedding: the query (question, title) column")
    positive: ColumnRef | None = Field(None, description="text embedding: the passage that answers the query")
    negative: ColumnRef | None = Field(None, description="text embedding: an optional hard negative passage (looks "
                                       "related, does not answer)")
    id: ColumnRef | None = Field(None, description="a row id column: luban predict copies it into each output row "
                                 "(default: the 0-based row number)")


class CleanConfig(Section):
    nfkc: bool = True
    strip: bool = True
    lowercase: bool = False
    drop_empty: bool = Field(True, description="drop rows whose text is empty (else: error naming the row)")
    drop_missing_label: bool = Field(True, description="drop rows without a label (else: error naming the row)")
    drop_duplicates: bool = True
    drop_conflicts: bool = Field(True, description="drop texts that appear with more than one label")
    missing_labels: list[str] = Field(["NaN", "null", "None"], description="label texts that mean 'no label' "
                                      "(compared ignoring case), treated like an empty label (see "
                                      "drop_missing_label); [] keeps them as classes")
    redact: list[Literal["phone", "email", "id_card", "bank_card", "ip", "url", "person", "address"]] = Field(
        default_factory=list, description="PII replaced in the texts before training (counted in the cleaning "
        "report, never the values): phone, email, id_card (checksum), bank_card (Luhn), ip, url; person and address "
        "need redact_ner")
    redact_style: Literal["tag", "pseudonym"] = Field("tag", description="tag: [PHONE]; pseudonym: [PHONE_1], "
                                                      "[PHONE_2], ... the same value the same pseudonym")
    redact_ner: str | None = Field(None, description="a luban token_classification run (folder) whose PER / LOC "
                                   "entities are the person / address names to redact")

    @model_validator(mode="after")
    def _ner_for_names(self):
        names = [t for t in self.redact if t in ("person", "address")]
        if names and self.redact_ner is None:
            raise ValueError(f"data.clean.redact_ner: redacting {' and '.join(names)} needs a named-entity model: a "
                             "luban token_classification run folder (e.g. trained with "
                             "examples/peoples_daily_ner.yaml)")
        return self


class SplitConfig(Section):
    validation: float = Field(0.1, gt=0, lt=1, description="fraction of train held out when no validation file")
    test: float = Field(0.1, gt=0, lt=1, description="fraction of train held out when no test file")
    stratify: bool = True
    seed: int | None = Field(None, description="default: the run's seed")

    @model_validator(mode="after")
    def _leaves_training_rows(self):
        if self.validation + self.test >= 1:
            raise ValueError(f"validation ({self.validation}) + test ({self.test}) must be below 1: both are "
                             "fractions of the training file, and the rest is what trains")
        return self


class DataConfig(Section):
    """Where the data comes from and how its files read: shared by every task (each task's config adds its own
    columns and settings, see TASKS)."""

    builtin: str | None = Field(None, description="a built-in dataset name (see `luban datasets list`)")
    train: Path | None = None
    validation: Path | None = None
    test: Path | None = None
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet", "text"] = Field(
        "auto", description="text: a plain-text corpus (text generation); auto tells by the file suffix")
    header: bool = True
    delimiter: str | None = Field(None, description="default: ',' for csv, tab for tsv")
    quoting: Literal["auto", "minimal", "none"] = Field("auto", description="auto: csv quotes, tsv does not")
    encoding: str | dict[Literal["train", "validation", "test"], str] = Field(
        "utf-8", description="text encoding of the data files, or one per file: {train: gbk, test: utf-8} (a file "
        "not named reads as utf-8; files given to luban evaluate / predict use the test entry)")
    split: SplitConfig = Field(default_factory=SplitConfig)
    train_limit: int | None = Field(None, gt=0, description="keep only the first N training rows "
                                    "(a seeded sample of N for an image folder)")

    def encoding_for(self, path) -> str:
        """The encoding to read `path` with: data.encoding, or its entry for the split `path` is the file of."""
        if isinstance(self.encoding, str):
            return self.encoding
        for split in ("train", "validation", "test"):
            p = getattr(self, split)
            if p is not None and Path(p) == Path(path):
                return self.encoding.get(split, "utf-8")
        return self.encoding.get("test", "utf-8")

    @model_validator(mode="after")
    def _one_source(self):
        if self.builtin is None and self.train is None:
            raise ValueError("give either data.builtin or data.train")
        if self.builtin is not None and self.train is not None:
            raise ValueError("give data.builtin or data.train, not both")
        return self


class DataExtras(Section):
    """The data settings only some tasks have (TaskSpec.data names which); each task's data section picks its own."""

    clean: CleanConfig = Field(default_factory=CleanConfig)
    image_root: Path | None = Field(None, description="folder that relative image paths start from "
                                    "(default: the listing file's folder)")
    skip_bad_files: bool = Field(False, description="skip unreadable images/audio with a count instead of failing")
    formatting: Literal["auto", "columns", "alpaca", "sharegpt"] = Field(
        "auto", description="text generation: the layout of instruction data. alpaca: instruction / input / output "
        "(+ system, history); sharegpt: conversations of {from: human|gpt|system, value} (or OpenAI messages of "
        "{role, content}); columns: the data.columns named; auto: those columns when any is named, else told by "
        "the file's fields. Preference rows hold chosen / rejected.")
    label_pattern: str | None = Field(
        None, description="audio folders: a regex on each file name (no suffix) whose `label` group is the "
        "transcript or class, e.g. '^(?P<label>\\d+)_' for FSDD's {digit}_{speaker}_{index}.wav; default: the "
        "sub-folder name")
    annotation_format: Literal["auto", "voc", "coco", "csv"] = Field(
        "auto", description="object detection: Pascal VOC XML folder, COCO JSON, or CSV of boxes")


# ----------------------------------------------------------------------------------------------- preprocessing


class AugmentConfig(Section):
    """Training-time image augmentation (never applied at evaluation or prediction)."""

    random_resized_crop: tuple[Annotated[float, Field(gt=0, le=1)], Annotated[float, Field(gt=0, le=1)]] | None = \
        Field((0.6, 1.0), description="scale range of the random crop; null: pad-free center crop only")
    hflip: bool = True
    color_jitter: float = Field(0.0, ge=0, le=1, description="brightness/contrast/saturation jitter strength")
    randaugment: int = Field(0, ge=0, le=4, description="RandAugment operations per image (0: off)")
    mixup: float = Field(0.0, ge=0, description="mixup alpha (0: off)")
    cutmix: float = Field(0.0, ge=0, description="cutmix alpha (0: off)")


class ImageConfig(Section):
    size: int = Field(32, gt=0, description="side of the square image the model sees")
    resize: int | None = Field(None, gt=0, description="shorter side before the center crop; default size*256/224")
    grayscale: bool = False
    normalize: Literal["dataset", "backbone", "imagenet", "none"] = Field(
        "dataset", description="mean/std from the training images, the pretrained backbone, or ImageNet")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)


class AudioAugmentConfig(Section):
    """Training-time audio augmentation (never at evaluation or prediction)."""

    freq_masks: int = Field(2, ge=0, description="SpecAugment: frequency masks per utterance")
    freq_mask_width: int = Field(8, ge=0, description="SpecAugment: widest frequency mask (mel bins)")
    time_masks: int = Field(2, ge=0, description="SpecAugment: time masks per utterance")
    time_mask_fraction: float = Field(0.1, ge=0, lt=1, description="SpecAugment: widest time mask (fraction "
                                      "of the utterance)")
    speed: tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]] | None = Field(
        (0.9, 1.1), description="random speed factor range (resampling); null: off")
    noise_snr_db: tuple[float, float] | None = Field(None, description="add white noise at a random SNR in "
                                                     "this range (dB); null: off")


class AudioConfig(Section):
    sample_rate: int = Field(16000, gt=0, description="every clip is resampled to this rate (soxr)")
    n_mels: int = Field(80, gt=0)
    win_ms: float = Field(25.0, gt=0)
    hop_ms: float = Field(10.0, gt=0)
    max_seconds: float = Field(30.0, gt=0, description="longer clips are an error (or skipped with "
                               "data.skip_bad_files)")
    normalize: bool = Field(True, description="per-utterance mean/variance normalization of the log-mels")
    augment: AudioAugmentConfig = Field(default_factory=AudioAugmentConfig)


class PreprocessingConfig(Section):
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    numeric: Literal["standard", "minmax", "none"] = Field("standard", description="tabular numeric scaling")
    bucket_by_length: bool = Field(True, description="batch texts of similar length together (less padding)")


# ----------------------------------------------------------------------------------------------- recommendation


class NegativesConfig(Section):
    sampler: Literal["uniform", "popularity"] = Field(
        "uniform", description="popularity: items drawn in proportion to count**popularity_exponent")
    per_positive: int = Field(1, gt=0, description="negatives drawn per training interaction")
    popularity_exponent: float = Field(0.75, ge=0)


class FeatureTableConfig(Section):
    """A user or item feature table, one row per id (used by the two_tower model). MovieLens u.user / u.item /
    users.dat / movies.dat are read directly, with their columns typed already."""

    path: Path | None = Field(None, description="CSV/TSV/JSONL/Parquet or a MovieLens table; null: none")
    format: Literal["auto", "csv", "tsv", "jsonl", "parquet"] = Field("auto", description="auto: by the suffix")
    header: bool = Field(True, description="the first line names the columns")
    delimiter: str | None = Field(None, description="default: ',' for csv, tab for tsv")
    encoding: str = Field("utf-8", description="text encoding of the table")
    id: ColumnRef | None = Field(None, description="the id column; default: user/item (or user_id, ...), else "
                                 "the first column")
    categorical: list[ColumnRef] = Field(default_factory=list, description="one value per row, e.g. gender")
    numeric: list[ColumnRef] = Field(default_factory=list, description="standardized numbers, e.g. age")
    multi_valued: dict[str, str] = Field(default_factory=dict, description="column -> separator, e.g. "
                                         "{genres: '|'}")
    text: list[ColumnRef] = Field(default_factory=list, description="bags of lowercased words, e.g. a title")


class RecommendationConfig(Section):
    """Interactions -> ranked items: feedback, splitting, negatives, evaluation cutoffs, side features."""

    feedback: Literal["auto", "implicit", "explicit"] = Field(
        "auto", description="explicit: ratings are predicted (mf_explicit); implicit: every row is an "
        "interaction; auto: explicit for mf_explicit")
    rating_threshold: float | None = Field(None, description="implicit: keep only rows with rating >= this")
    id_type: Literal["auto", "int", "str"] = Field(
        "auto", description="int: ids must be integers (007 == 7); auto: int for MovieLens files, else str")
    drop_duplicates: bool = Field(True, description="keep only the latest row of a repeated user-item pair")
    min_user_interactions: int = Field(1, ge=1, description="drop users with fewer interactions (k-core)")
    min_item_interactions: int = Field(1, ge=1, description="drop items with fewer interactions (k-core)")
    split: Literal["leave_last_out", "leave_random_out", "temporal_ratio", "random_ratio"] = Field(
        "leave_last_out", description="leave_last_out: each user's latest interaction is test and the one before "
        "validation (without a timestamp column: leave_random_out, with a note); leave_random_out: one seeded "
        "random interaction per user each; temporal_ratio: the latest data.split.test / .validation fractions of "
        "all interactions (without timestamps: random_ratio); random_ratio: seeded random fractions (data.split.seed)")
    negatives: NegativesConfig = Field(default_factory=NegativesConfig)
    k: int = Field(10, gt=0, description="cutoff of hr, recall, ndcg and coverage")
    ks: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [5, 10, 20],
                                                  description="more cutoffs in the detailed results")
    exclude_seen: bool = Field(True, description="recommend/serve: leave out items the user already has "
                               "(evaluation always does)")
    user_features: FeatureTableConfig = Field(default_factory=FeatureTableConfig)
    item_features: FeatureTableConfig = Field(default_factory=FeatureTableConfig)


# every model config (luban/models/*_config.py), by its `type`
ModelConfig = Annotated[Union[tuple(e.config for e in models().values())], Field(discriminator="type")]


# ----------------------------------------------------------------------------------------------- trainer


class EarlyStoppingConfig(Section):
    metric: str | None = Field(None, description="validation metric to watch; default: the task's main metric")
    mode: Literal["auto", "max", "min"] = "auto"
    patience: int | None = Field(None, ge=1, description="epochs without improvement before stopping; null: never; "
                                 "unset: max(3, epochs / 5) for classification, regression and tagging tasks (they "
                                 "have a validation split), never for the others")


class DistributedConfig(Section):
    """Data-parallel training over Ray Train workers (PyTorch DDP; gloo on CPU, nccl on GPUs)."""

    backend: Literal["none", "ray"] = "none"
    workers: int = Field(2, gt=0, description="training processes; trainer.batch_size stays the global batch")
    address: str = Field("local", description="local: start Ray on this machine; auto: join the running "
                         "cluster (ray start --head ...); or ray://host:10001")
    cpus_per_worker: int = Field(1, gt=0)
    use_gpu: bool | None = Field(None, description="default: when CUDA is present")


class PreferenceConfig(Section):
    """Preference optimization of a pretrained causal LM from (prompt, chosen, rejected) triples; DPO, IPO and hinge
    compare with the model as loaded (the frozen reference), SimPO and ORPO need no reference."""

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo"] = Field(
        "sigmoid", description="sigmoid: DPO; ipo: squared loss on length-normalized log-ratios (IPO); hinge: SLiC; "
        "reference-free: simpo (length-normalized log-likelihood margin), orpo (SFT loss + odds-ratio term)")
    beta: float = Field(0.1, gt=0, description="DPO/IPO/hinge: strength of the pull toward the reference model; "
                        "simpo: reward scale (its paper uses 2-2.5); orpo: weight of the odds-ratio term")
    simpo_gamma: float = Field(0.5, ge=0, description="simpo: the target reward margin (gamma)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="sigmoid: assumed fraction of flipped "
                                   "preference labels (conservative DPO)")
    sft_weight: float = Field(0.0, ge=0, description="adds this times the chosen replies' token loss (RPO)")


class TrainerConfig(Section):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    optimizer: Literal["adamw", "adam", "sgd", "adagrad", "rmsprop"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0, description="L2 regularization (decoupled for adamw)")
    l1: float = Field(0.0, ge=0, description="L1 penalty on weights, added to the loss")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd / rmsprop momentum")
    scheduler: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="linear/cosine decay ends at lr * this")
    grad_clip: float | None = Field(1.0, gt=0)
    grad_accumulation: int = Field(1, gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA; on CPU bf16 for pretrained transformers when the CPU has it"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    num_threads: int | None = Field(None, gt=0, description="CPU threads; default: the cores this process may use "
                                    "less those the machine's other work keeps busy (1-minute load average), at "
                                    "least 1 — recorded in metrics.json (environment.threads_from)")
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    keep: Literal["best", "last"] = Field("best", description="the weights a run ends with: the epoch best by the "
                                          "validation metric, or the last epoch's (a fixed-length retrain)")
    log_every: int = Field(50, gt=0, description="optimizer steps between log lines off a terminal (step, loss, "
                           "lr, throughput, ETA) and step-level train loss in TensorBoard/MLflow")
    log_seconds: float = Field(30.0, ge=0, description="off a terminal, also a log line after this many seconds "
                               "without one (0: by steps only)")
    eval_steps: int | None = Field(None, gt=0, description="also evaluate on validation every N optimizer steps "
                                   "(long epochs): best checkpoint and early stopping (patience counts "
                                   "evaluations) see every evaluation; default: once per epoch")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field(
        (0.9, 0.999), description="Adam/AdamW betas")
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)


class PrivacyConfig(Section):
    """Differentially private training (DP-SGD with Opacus) of a from-scratch model or a frozen encoder's head."""

    epsilon: float = Field(gt=0, description="the privacy budget of the whole run (smaller: more private, noisier)")
    delta: float = Field(1e-5, gt=0, lt=1, description="the failure probability; well below 1 / training rows")
    max_grad_norm: float = Field(1.0, gt=0, description="each example's gradient is clipped to this L2 norm")


class TrainerExtras(Section):
    """The trainer settings only some tasks have (TaskSpec.trainer names which)."""

    privacy: PrivacyConfig | None = Field(None, description="train with DP-SGD (Opacus) to this (epsilon, delta); "
                                          "the epsilon spent goes to metrics.json. From-scratch text, tabular and "
                                          "image models, and pretrained ones with model.freeze: true (the head)")

    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification: soften one-hot targets")
    steps_per_epoch: Annotated[int, Field(gt=0)] | Literal["auto"] | None = Field(
        "auto", description="language modelling: optimizer steps (random training windows) between evaluations; "
        "null: one pass over the tokens; auto: a GPT from scratch gets a token budget from the corpus' size "
        "(luban.models.gpt_config.auto_steps), a pretrained LM one pass; resolved when the corpus is read")
    preference: PreferenceConfig = Field(default_factory=PreferenceConfig, description="text generation with "
                                         "chosen/rejected columns: the preference loss (DPO and kin)")


class GenerationSettings(Section):
    """Decoding defaults for generative text tasks (text generation, translation, summarization); the CLI and API
    override them per call."""

    max_new_tokens: int = Field(200, gt=0)
    do_sample: bool | None = Field(None, description="sample (true) or search (false); default: sample for text "
                                   "generation, beam/greedy search for seq2seq")
    temperature: float = Field(0.8, ge=0, description="0: greedy")
    top_k: int | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    repetition_penalty: float = Field(1.0, gt=0)
    num_beams: int = Field(1, gt=0, description="beam search width (1: no beam search)")
    length_penalty: float = Field(1.0, description="beam search: scores are divided by length**length_penalty")
    stop: list[str] = Field(default_factory=list, description="stop strings (cut from the output)")
    seed: int | None = Field(None, description="sampling seed; default: unseeded")
    sample_prompts: list[str] = Field(default_factory=list, description="text generation: prompts sampled at "
                                      "every evaluation (history, report); default: a line from validation")
    sample_tokens: int = Field(120, ge=0, description="tokens generated per sample at each evaluation")
    lead_n: int = Field(1, ge=1, description="summarization: sentences in the lead-N baseline")


class SearchParam(Section):
    """One hyperparameter of `luban tune`: a dotted config path -> its distribution."""

    type: Literal["choice", "uniform", "loguniform", "int"]
    values: list[Any] | None = Field(None, description="choice: the candidates")
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0, description="uniform / int: grid step")
    log: bool = Field(False, description="int: sample on a log scale")
    when: dict[str, Any] | None = Field(None, description="conditional: only sampled when these (earlier) "
                                        "parameters have these values, e.g. {model.type: textcnn}")

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs values: [...]")
        elif self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs low and high")
        elif self.low > self.high or (self.type == "loguniform" and self.low <= 0):
            raise ValueError(f"low/high out of order or not positive for {self.type}: {self.low}, {self.high}")
        return self


class SearchConfig(Section):
    """The search space and strategy for `luban tune` (ignored by `luban train`)."""

    space: dict[str, SearchParam] = Field(description="dotted config path -> distribution, e.g. trainer.lr: "
                                          "{type: loguniform, low: 1e-4, high: 1e-1}")
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    pruner: Literal["median", "none"] = Field("median", description="stop trials whose intermediate validation "
                                              "metric is worse than the median of earlier trials")
    metric: str | None = Field(None, description="validation metric to optimize; default: the task's main metric")
    direction: Literal["auto", "maximize", "minimize"] = "auto"
    seed: int | None = Field(None, description="sampler seed; default: the run's seed")
    retrain: bool = Field(False, description="also retrain the best config on train + validation")
    start_from_config: bool = Field(True, description="the first trial runs the config's own values of the "
                                    "searched parameters (tpe/random), so the search starts from what you have")
    cv_folds: int | None = Field(None, ge=2, description="score each trial by K-fold cross-validation over the "
                                 "training and validation rows together (each fold is once the held-out set its "
                                 "run is scored and stopped on): K times slower, less prone to fitting one "
                                 "validation set; tabular data, local backend")


class TaggingConfig(Section):
    """Sequence labelling (token_classification)."""

    crf: bool = Field(True, description="decode with a linear-chain CRF (learned tag transitions); false: each "
                      "token's best tag")
    split: Literal["auto", "char", "whitespace"] = Field(
        "auto", description="how luban predict / serve cut a raw text into tokens; auto: char when the training "
        "tokens are single characters (Chinese), else whitespace")
    scheme: Literal["auto", "entities", "segmentation", "plain"] = Field(
        "auto", description="entities: BIO/IOBES tags with types -> spans; segmentation: B/M/E/S -> words; plain: "
        "one tag per token (e.g. part of speech); auto: found from the training tags")


class EmbeddingConfig(Section):
    """Text embedding (text_embedding): the contrastive loss and the retrieval evaluation."""

    temperature: float = Field(0.05, gt=0, le=1, description="softmax temperature of the in-batch-negatives loss "
                               "(sentence-transformers' MultipleNegativesRankingLoss scale 20 = 0.05)")
    symmetric: bool = Field(False, description="also train passage -> query (each positive picks its query among "
                            "the batch's queries), as in CLIP")
    corpus: Path | None = Field(None, description="more passages for evaluation to retrieve among (distractors "
                                "besides the held-out positives): .txt one per line, or a csv/tsv/jsonl/parquet "
                                "file with corpus_column")
    corpus_column: ColumnRef = Field("text", description="the passage column of the corpus file")
    batch_size: int = Field(64, gt=0, description="texts per forward pass when embedding for evaluation")


class TrackingConfig(Section):
    mlflow: str | None = Field(None, description="MLflow tracking URI, e.g. sqlite:///mlruns.db or "
                               "http://mlflow:5000: params, per-epoch metrics, report and model as artifacts")
    experiment: str | None = Field(None, description="MLflow experiment; default: the task name")


class EvaluationConfig(Section):
    baseline: bool = Field(True, description="also train a classical baseline on the same split")
    worst_examples: int = Field(20, ge=0, description="most confidently wrong examples kept for the report")
    slices: list[ColumnRef] = Field(default_factory=list, description="columns of the data files whose values "
                                    "slice the test rows: every metric per value (counts, bootstrap intervals), "
                                    "the worst slice and the largest gap (read even when the model does not use "
                                    "the column)")
    sensitive: ColumnRef | None = Field(None, description="binary classification: a sensitive-attribute column; "
                                        "adds fairlearn's demographic-parity and equalized-odds differences "
                                        "(and slices by it)")


class OutputConfig(Section):
    dir: Path = Path("runs")
    name: str | None = Field(None, description="run name; default: the config file's name")
    overwrite: bool = False
    tensorboard: bool = True
    keep_checkpoints: bool = Field(False, description="keep checkpoints/ (best and last, with optimizer state) in "
                                   "the finished run; by default the kept weights live only in model/")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v):
        if v is not None and (v in ("", ".", "..") or "/" in v or "\\" in v or v.endswith((".partial", ".replaced"))):
            raise ValueError(f"{v!r} must be a plain folder name inside output.dir (no '/', '\\' or '..', not "
                             "ending in .partial or .replaced); put the parent folder in output.dir instead")
        return v


# the validation metrics early stopping can watch (the scalar keys of evaluate.metrics)
CLASSIFICATION_METRICS = ["accuracy"] + [f"{m}_{avg}" for avg in ("macro", "micro", "weighted")
                                         for m in ("precision", "recall", "f1")]
REGRESSION_METRICS = ["mse", "rmse", "mae", "r2"]
LOWER_IS_BETTER = {"loss", "perplexity", "cer", "wer", "mse", "rmse", "mae", "kid", "g_loss", "d_loss"}


# ----------------------------------------------------------------------------------------------- tasks


def _text_generation_checks(cfg) -> None:
    """The data mode the columns choose (corpus, SFT or preference) is complete, and preference training starts from
    a pretrained causal LM."""
    c, m = cfg.data.columns, cfg.model
    if cfg.data.formatting in ("alpaca", "sharegpt") and any(
            getattr(c, r) is not None for r in ("text", "prompt", "response", "messages", "chosen", "rejected")):
        raise ValueError(f"data.formatting: {cfg.data.formatting} data has its own fields; do not name "
                         "data.columns (text, prompt, response, messages, chosen, rejected) beside it")
    if c.chosen is not None or c.rejected is not None:
        if c.chosen is None or c.rejected is None:
            raise ValueError("data.columns: preference training needs both chosen and rejected")
        if c.response is not None:
            raise ValueError("data.columns: preference data has chosen/rejected replies, not a response column")
        if (c.prompt is None) == (c.messages is None):
            raise ValueError("data.columns: preference training needs the prompt column or the messages column "
                             "(the conversation the replies answer), one of them")
        if m.type != "pretrained_lm" or m.finetune == "none":
            raise ValueError("model: preference training starts from a pretrained causal LM (model.type: "
                             "pretrained_lm with finetune lora or full); for a GPT trained with luban, export it "
                             "first (luban export RUN --format hf) and point model.path at that folder")
    elif c.messages is not None and (c.prompt is not None or c.response is not None):
        raise ValueError("data.columns: give either messages or prompt + response, not both")
    elif (c.prompt is None) != (c.response is None):
        raise ValueError("data.columns: supervised fine-tuning needs both prompt and response")
    if m.type == "pretrained_lm" and m.base_dtype == "bfloat16" and m.finetune == "full":
        raise ValueError("model.base_dtype: bfloat16 base weights are for finetune lora or none "
                         "(full fine-tuning keeps float32 master weights)")


def _privacy_checks(cfg) -> None:
    """trainer.privacy: refused where DP-SGD cannot apply."""
    t, p = cfg.trainer, cfg.trainer.privacy
    if p is None:
        return
    why = None
    if getattr(cfg.model, "pretrained", False) and getattr(cfg.model, "freeze", None) is not True:
        # a frozen public encoder + a private head is DP fine-tuning's usual shape (the guarantee covers the training
        # rows: only the head sees their gradients); updating the encoder too would need its layers' per-example
        # gradients, which Opacus does not give for every HF block
        why = ("a pretrained model whose encoder is trained (set model.freeze: true to train only its head "
               "privately, or train a from-scratch model)")
    elif t.distributed.backend != "none":
        why = "distributed training (trainer.distributed)"
    elif t.grad_accumulation != 1:
        why = "trainer.grad_accumulation > 1 (each step is one sampled batch)"
    elif t.l1 > 0:
        why = "trainer.l1 (the penalty's gradient would bypass the per-example clipping)"
    elif t.precision == "fp16":
        why = "fp16 precision"
    if why is not None:
        raise ValueError(f"trainer.privacy: DP-SGD cannot be combined with {why}")


def _tabular_checks(cfg) -> None:
    _privacy_checks(cfg)
    c = cfg.data.columns
    if c.features is not None and c.label in c.features:
        raise ValueError(f"data.columns.features: the label column {c.label!r} cannot also be a feature")


def _image_checks(cfg) -> None:
    _privacy_checks(cfg)
    im = cfg.preprocessing.image
    if im.resize is not None and im.resize < im.size:
        raise ValueError(f"preprocessing.image.resize ({im.resize}) must be >= size ({im.size})")


def _recommendation_checks(cfg) -> None:
    r, m = cfg.recommendation, cfg.model
    if cfg.data.builtin is not None:
        raise ValueError("data.builtin: recommendation reads interactions from data.train (no built-in sets)")
    if m.type == "mf_explicit" and r.feedback == "implicit":
        raise ValueError("recommendation.feedback: mf_explicit predicts ratings; set feedback: explicit (or auto)")
    if m.type == "two_tower" and not m.id_embeddings and r.user_features.path is None \
            and r.item_features.path is None:
        raise ValueError("model.id_embeddings: false needs recommendation.user_features or item_features")


@dataclass(frozen=True)
class TaskSpec:
    """What one task's config holds beyond the sections every task shares (seed, data source and split, trainer,
    evaluation, search, tracking, output): its columns, its own data / preprocessing / trainer settings, its
    generation settings and its task-only sections. The models that fit it come from the model registry."""

    columns: tuple[str, ...]
    required: tuple[str, ...] = ()  # columns the config must name (a built-in dataset names its own)
    data: tuple[str, ...] = ()  # fields of DataExtras
    preprocessing: tuple[str, ...] = ()  # fields of PreprocessingConfig
    trainer: tuple[str, ...] = ()  # fields of TrainerExtras
    generation: tuple[str, ...] = ()  # fields of GenerationSettings (none: no generation section)
    sections: tuple[str, ...] = ()  # task-only sections: recommendation, tagging
    metrics: tuple[str, ...] = tuple(CLASSIFICATION_METRICS)  # what trainer.early_stopping.metric may watch
    check: Callable[[Any], None] | None = None  # cross-section checks (raise ValueError naming the YAML path)
    early_stopping: bool = False  # supervised, with a validation split: patience on by default (_resolve)
    # "module:TaskClass:PredictorClass" (module under luban.tasks): the task's training and inference classes, imported
    # by luban.tasks.task_classes only when a run trains or loads
    code: str = ""


_DECODING = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "num_beams",
             "length_penalty", "stop", "seed")
_SPEECH = dict(data=("clean", "image_root", "skip_bad_files", "label_pattern"),
               preprocessing=("audio", "bucket_by_length"))
_SEQ2SEQ = dict(columns=("source", "target", "id"), required=("source", "target"), data=("clean",),
                preprocessing=("tokenizer", "bucket_by_length"), trainer=("label_smoothing",))
_TABULAR = dict(columns=("label", "features", "categorical", "id"), required=("label",), data=("clean",),
                preprocessing=("numeric",), trainer=("privacy",), check=_tabular_checks, early_stopping=True)

TASKS: dict[str, TaskSpec] = {
    "text_classification": TaskSpec(("text", "label", "id"), ("text", "label"), ("clean",),
                                    ("tokenizer", "bucket_by_length"), trainer=("privacy",), check=_privacy_checks,
                                    early_stopping=True,
                                    code="text_classification:TextClassificationTask:TextClassificationPredictor"),
    "token_classification": TaskSpec(("tokens", "tags", "text", "id"), ("tokens", "tags"), ("clean",),
                                     ("tokenizer", "bucket_by_length"), sections=("tagging",),
                                     metrics=("f1", "precision", "recall", "accuracy"), early_stopping=True,
                                     code="token_classification:TokenClassificationTask:TokenClassificationPredictor"),
    "tabular_regression": TaskSpec(**_TABULAR, metrics=tuple(REGRESSION_METRICS),
                                   code="tabular:TabularTask:TabularPredictor"),
    "tabular_classification": TaskSpec(**_TABULAR,
                                       code="tabular:TabularTask:TabularPredictor"),
    "image_classification": TaskSpec(("image", "label", "id"), (), ("clean", "image_root", "skip_bad_files"),
                                     ("image",), ("label_smoothing", "privacy"), check=_image_checks, early_stopping=True,
                                     code="image_classification:ImageClassificationTask:ImageClassificationPredictor"),
    "object_detection": TaskSpec(("id",), (), ("image_root", "skip_bad_files", "annotation_format"), ("image",),
                                 metrics=("map50", "map", "map75"),
                                 code="object_detection:ObjectDetectionTask:ObjectDetectionPredictor"),
    "image_generation": TaskSpec(("image", "label"), (), ("image_root", "skip_bad_files"), ("image",),
                                 metrics=("mean_confidence", "class_entropy_ratio", "kid", "g_loss", "d_loss"),
                                 code="image_generation:ImageGenerationTask:ImageGenerationPredictor"),
    "text_generation": TaskSpec(("text", "prompt", "response", "messages", "chosen", "rejected", "id"),
                                data=("formatting",), preprocessing=("tokenizer",),
                                trainer=("steps_per_epoch", "preference"),
                                generation=_DECODING + ("sample_prompts", "sample_tokens"),
                                metrics=("loss", "perplexity"), check=_text_generation_checks,
                                code="text_generation:TextGenerationTask:TextGenerationPredictor"),
    "translation": TaskSpec(**_SEQ2SEQ, generation=_DECODING, metrics=("bleu", "chrf", "loss"),
                            code="seq2seq:Seq2SeqTask:Seq2SeqPredictor"),
    "summarization": TaskSpec(**_SEQ2SEQ, generation=_DECODING + ("lead_n",),
                              metrics=("rouge_l", "rouge_1", "rouge_2", "loss"),
                              code="seq2seq:Seq2SeqTask:Seq2SeqPredictor"),
    "speech_recognition": TaskSpec(("audio", "text", "id"), **_SPEECH, metrics=("cer", "wer", "exact_match", "loss"),
                                   code="speech:SpeechTask:SpeechPredictor"),
    "audio_classification": TaskSpec(("audio", "label", "id"), **_SPEECH, trainer=("label_smoothing",),
                                     early_stopping=True, code="speech:SpeechTask:SpeechPredictor"),
    "text_embedding": TaskSpec(("query", "positive", "negative", "text", "id"), ("query", "positive"), ("clean",),
                               sections=("embedding",),
                               metrics=("mrr", "recall_at_1", "recall_at_10", "ndcg_at_10", "loss"),
                               code="text_embedding:TextEmbeddingTask:TextEmbeddingPredictor"),
    "recommendation": TaskSpec(("user", "item", "rating", "timestamp"), sections=("recommendation",),
                               metrics=("ndcg", "hr", "recall", "mrr", "coverage", "rmse", "mae"),
                               check=_recommendation_checks,
                               code="recommendation:RecommendationTask:RecommendationPredictor"),
}
# the tasks whose test rows evaluation.slices / evaluation.sensitive can slice (Task.split_lines)
SLICED_TASKS = ("text_classification", "tabular_classification", "tabular_regression", "image_classification")
# the tasks whose texts data.clean.redact redacts before training (luban.data.redact.for_clean)
REDACTED_TASKS = ("text_classification", "translation", "summarization")
TaskName = Literal[tuple(TASKS)]  # type: ignore[valid-type]
TASK_METRICS = {task: list(spec.metrics) for task, spec in TASKS.items()}
_SECTIONS = {"recommendation": RecommendationConfig, "tagging": TaggingConfig, "embedding": EmbeddingConfig}

# task -> the model configs that fit it (the model registry); the first is the default
TASK_MODELS: dict[str, tuple[type, ...]] = {task: models_for(task) for task in TASKS}


def _model_type(cls) -> str:
    return cls.model_fields["type"].default


def _owns_tokenizer(model_type: str | None) -> bool:
    cls = _MODEL_CLASSES.get(model_type)
    return bool(cls is not None and getattr(cls, "own_tokenizer", False))


class RunConfig(Section):
    """A run's config: the base of every task's config class (TASK_CONFIGS), which adds the task's sections.
    `validate` / `load_config` return the task's class, resolved: defaults filled, relative paths resolved."""

    task: str

    @classmethod
    def model_validate(cls, obj: Any, *args, **kwargs):
        """RunConfig.model_validate(tree) validates with the class of the tree's task (like `validate`, whose errors
        read better)."""
        if cls is RunConfig and isinstance(obj, dict) and obj.get("task") in TASK_CONFIGS:
            return TASK_CONFIGS[obj["task"]].model_validate(obj, *args, **kwargs)
        return super().model_validate(obj, *args, **kwargs)

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, tree: Any):
        """What validation sets from the YAML tree (a copy; the caller's stays as it is): an old flat config's
        settings of other tasks dropped at their defaults, a built-in dataset's columns, a pretrained model's
        tokenizer."""
        if not isinstance(tree, dict):
            return tree
        tree = copy.deepcopy(tree)
        task = tree.get("task")
        _drop_legacy(tree, cls, _legacy_defaults())
        data = tree.get("data")
        if isinstance(data, dict) and data.get("builtin") is not None:
            _builtin_columns(data, TASKS[task].columns)
        _default_patience(tree, task)
        if tree.get("model", 0) is None:
            del tree["model"]  # model: null is the task's default model
        model = tree.get("model")
        model_type = model.get("type") if isinstance(model, dict) else _model_type(TASK_MODELS[task][0])
        fits = any(_model_type(m) == model_type for m in TASK_MODELS[task])
        if fits:
            _model_recipe(tree, model_type)
        pre = tree.setdefault("preprocessing", {}) if fits and _owns_tokenizer(model_type) else None
        tok = pre.setdefault("tokenizer", {}) if isinstance(pre, dict) else None
        if isinstance(tok, dict):  # a pretrained model brings its tokenizer
            if "type" not in tok:
                tok["type"] = "pretrained"
            elif tok["type"] != "pretrained":
                raise ValueError("preprocessing.tokenizer.type: a pretrained model needs its own tokenizer "
                                 "(type: pretrained, or leave it unset)")
        return tree

    @model_validator(mode="after")
    def _task_checks(self):
        spec = TASKS[self.task]
        missing = [role for role in spec.required if getattr(self.data.columns, role) is None]
        if missing and self.data.builtin is not None and not _known_builtin(self.data.builtin):
            missing = []  # reading an unknown built-in dataset is the error that names the ones there are
        if len(spec.required) == 1 and missing:
            raise ValueError(f"data.columns.{missing[0]}: required for task {self.task} (a column name, or a "
                             "0-based index when data.header is false)")
        if missing:
            raise ValueError(f"data.columns: {self.task.replace('_', ' ')} needs "
                             f"{' and '.join('data.columns.' + r for r in spec.required)} (column names, or 0-based "
                             "indexes when data.header is false)")
        metric = self.trainer.early_stopping.metric
        if metric is not None and metric not in spec.metrics:
            close = difflib.get_close_matches(metric, spec.metrics, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"trainer.early_stopping.metric: unknown validation metric {metric!r} for task "
                             f"{self.task}{hint}; choose one of {', '.join(spec.metrics)}")
        ev = self.evaluation
        if (ev.slices or ev.sensitive is not None) and self.task not in SLICED_TASKS:
            raise ValueError(f"evaluation.{'slices' if ev.slices else 'sensitive'}: slicing the test rows is for "
                             f"{', '.join(SLICED_TASKS)} (not task {self.task})")
        clean = getattr(self.data, "clean", None)
        if clean is not None and clean.redact and self.task not in REDACTED_TASKS:
            raise ValueError(f"data.clean.redact: redaction before training is for the text tasks "
                             f"{', '.join(REDACTED_TASKS)} (not task {self.task}); `luban redact` cleans any file")
        if spec.check is not None:
            spec.check(self)
        return self


def _model_recipe(tree: dict, model_type: str) -> None:
    """A model's own recipe (ModelSection.trainer_defaults, e.g. the from-scratch GPT's): the trainer settings the
    config leaves unset take the model's values instead of the task-wide ones; a setting the config names wins."""
    recipe = getattr(_MODEL_CLASSES.get(model_type), "trainer_defaults", None)
    trainer = tree.get("trainer", {})
    if recipe and isinstance(trainer, dict):
        tree["trainer"] = {**copy.deepcopy(recipe), **trainer}


def _default_patience(tree: dict, task) -> None:
    """Early stopping is on by default for the supervised tasks with a validation split (TaskSpec.early_stopping):
    an unset trainer.early_stopping.patience becomes max(3, epochs / 5) there (null keeps it off)."""
    spec = TASKS.get(task)
    trainer = tree.get("trainer", {})
    if spec is None or not spec.early_stopping or not isinstance(trainer, dict):
        return
    es = trainer.get("early_stopping", {})
    if not isinstance(es, dict) or "patience" in es:
        return
    epochs = trainer.get("epochs", TrainerConfig.model_fields["epochs"].default)
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > 0:
        tree["trainer"] = {**trainer, "early_stopping": {**es, "patience": max(3, -(-epochs // 5))}}


def _known_builtin(name: str) -> bool:
    from luban.data.builtin import BUILTINS

    return name in BUILTINS


def _builtin_columns(data: dict, roles: tuple[str, ...]) -> None:
    """A built-in dataset names its own columns: fill the task's ones the config leaves unset."""
    from luban.data.builtin import BUILTINS

    b = BUILTINS.get(data["builtin"])
    if b is None:
        return  # reading the data says which names exist
    columns = data.setdefault("columns", {})
    if isinstance(columns, dict):
        for role, col in b.columns.items():
            if role in roles and columns.get(role) is None:
                columns[role] = col


def _pick(source: type[BaseModel], names) -> dict:
    return {n: (source.model_fields[n].annotation, source.model_fields[n]) for n in names}


def _named(cls):
    """A task's config class is a name of this module (TextClassificationConfig, RecommendationData, ...): importable
    and picklable like the written-out sections."""
    if cls.__name__ in globals():
        raise RuntimeError(f"luban.config.{cls.__name__} is defined twice")
    globals()[cls.__name__] = cls
    return cls


def _section(name: str, source: type[BaseModel], names, base: type[BaseModel] = Section) -> type[BaseModel]:
    return _named(create_model(name, __base__=base, __doc__=source.__doc__, __module__=__name__,
                               **_pick(source, names)))


def _model_field(task: str):
    models = TASK_MODELS[task]
    ann = models[0] if len(models) == 1 else Annotated[Union[models], Field(discriminator="type")]
    return ann, Field(default_factory=models[0], description=f"default: {_model_type(models[0])}")


def _task_config(task: str, spec: TaskSpec) -> type[RunConfig]:
    camel = "".join(w.title() for w in task.split("_"))
    columns = _section(f"{camel}Columns", ColumnsConfig, spec.columns)
    data = _named(create_model(f"{camel}Data", __base__=DataConfig, __doc__=DataConfig.__doc__, __module__=__name__,
                               columns=(columns, Field(default_factory=columns)), **_pick(DataExtras, spec.data)))
    fields: dict[str, Any] = {"task": (Literal[task], ...), "seed": (int, 42), "data": (data, ...)}
    if spec.preprocessing:
        pre = _section(f"{camel}Preprocessing", PreprocessingConfig, spec.preprocessing)
        fields["preprocessing"] = (pre, Field(default_factory=pre))
    fields["model"] = _model_field(task)
    trainer = _section(f"{camel}Trainer", TrainerExtras, spec.trainer, base=TrainerConfig)
    fields["trainer"] = (trainer, Field(default_factory=trainer))
    fields["evaluation"] = (EvaluationConfig, Field(default_factory=EvaluationConfig))
    if spec.generation:
        gen = _section(f"{camel}Generation", GenerationSettings, spec.generation)
        fields["generation"] = (gen, Field(default_factory=gen))
    for name in spec.sections:
        fields[name] = (_SECTIONS[name], Field(default_factory=_SECTIONS[name]))
    fields["search"] = (SearchConfig | None, Field(None, description="hyperparameter search space (luban tune)"))
    fields["tracking"] = (TrackingConfig, Field(default_factory=TrackingConfig))
    fields["output"] = (OutputConfig, Field(default_factory=OutputConfig))
    return _named(create_model(f"{camel}RunConfig", __base__=RunConfig, __doc__=f"The config of a {task} run.",
                               __module__=__name__, **fields))


TASK_CONFIGS: dict[str, type[RunConfig]] = {task: _task_config(task, spec) for task, spec in TASKS.items()}
_MODEL_CLASSES = {name: entry.config for name, entry in models().items()}
_MODEL_TYPES = set(_MODEL_CLASSES)

# what the flat config (one schema for every task, before per-task configs) wrote for the settings a task no longer
# has: a run dir's config.yaml holds them at these defaults, dropped on loading (any other value is an error)
@functools.cache
def _legacy_defaults() -> dict:
    return {
        "data": {"columns": ColumnsConfig().model_dump(mode="json"), **DataExtras().model_dump(mode="json")},
        "preprocessing": PreprocessingConfig().model_dump(mode="json"),
        "trainer": {**TrainerExtras().model_dump(mode="json"), "steps_per_epoch": None},  # the flat default
        "generation": GenerationSettings().model_dump(mode="json"),
        "recommendation": RecommendationConfig().model_dump(mode="json"),
        "tagging": TaggingConfig().model_dump(mode="json"),
    }


def _same(value: Any, default: Any) -> bool:
    if isinstance(value, dict) and isinstance(default, dict):
        return all(k in default and _same(v, default[k]) for k, v in value.items())
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) == list(default)
    return value == default


def _drop_legacy(tree: dict, cls: type[BaseModel] | None, legacy: dict) -> None:
    """Drop the keys of `tree` that `cls` lacks but the flat schema had, when they hold the flat default."""
    for key in list(tree):
        sub_legacy = legacy.get(key)
        if sub_legacy is None and key not in legacy:
            continue
        field = cls.model_fields.get(key) if cls is not None else None
        if field is None:
            if _same(tree[key], sub_legacy):
                del tree[key]
        elif isinstance(tree[key], dict) and isinstance(sub_legacy, dict):
            _drop_legacy(tree[key], _section_class(field.annotation), sub_legacy)


# ----------------------------------------------------------------------------------------------- loading


def _format_errors(err: ValidationError, source: str, task: str | None = None) -> str:
    lines = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"]]
        model_type = None
        # drop the discriminator tag pydantic inserts for unions (model.textcnn.dropout -> model.dropout)
        if len(loc) >= 2 and loc[0] == "model" and loc[1] in _MODEL_TYPES:
            model_type = loc[1]
            loc = [loc[0]] + loc[2:]
        elif loc[:1] == ["model"] and task is not None and len(TASK_MODELS[task]) == 1:
            model_type = _model_type(TASK_MODELS[task][0])
        msg = _message(e, loc, task, model_type)
        if not loc and re.match(r"[a-z_]+(\.[a-z_]+)*: ", msg):
            lines.append(msg)  # a cross-section check that names its own path
            continue
        path = ".".join(loc) or "(top level)"
        lines.append(f"{path}: {msg}")
    where = f" {source}" if source else ""
    return f"invalid config{where}:\n  " + "\n  ".join(dict.fromkeys(lines))


def _section_class(ann: Any):
    """The Section subclass inside an annotation (unwrapping Optional / Union / Annotated), or None."""
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in get_args(ann):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _walk(loc: list[str], task: str | None, model_type: str | None):
    """The config class that holds the key at `loc` (the last part), and the flat schema's defaults there."""
    model: Any = TASK_CONFIGS[task] if task is not None else RunConfig
    legacy: Any = _legacy_defaults()
    parts = loc[:-1]
    if model_type is not None and parts[:1] == ["model"]:
        model, parts, legacy = _MODEL_CLASSES[model_type], parts[1:], {}
    for part in parts:
        legacy = legacy.get(part) if isinstance(legacy, dict) else None
        field = model.model_fields.get(part) if model is not None else None
        model = _section_class(field.annotation) if field is not None else None
    return model, legacy if isinstance(legacy, dict) else {}


def _message(e: dict, loc: list[str], task: str | None = None, model_type: str | None = None) -> str:
    t, ctx = e["type"], e.get("ctx") or {}
    if t == "extra_forbidden":
        model, legacy = _walk(loc, task, model_type)
        allowed = sorted(model.model_fields) if model is not None else []
        if task is not None and loc[-1] in legacy:
            return f"not a setting of task {task}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key{hint}" + (f"; allowed: {', '.join(allowed)}" if allowed else "")
    if t == "missing":
        return "required"
    for key, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
        if t in ("greater_than", "greater_than_equal", "less_than", "less_than_equal") and key in ctx:
            return f"must be {sym} {ctx[key]} (got {e.get('input')!r})"
    if t == "literal_error" and loc == ["model", "type"] and e.get("input") in _MODEL_TYPES and task is not None:
        return f"{e['input']!r} does not fit task {task} (use {ctx.get('expected')})"
    if t == "literal_error" and loc == ["model", "type"]:
        return f"unknown model type {e.get('input')!r}; choose one of {ctx.get('expected')}"
    if t == "literal_error":
        return f"must be one of {ctx.get('expected')} (got {e.get('input')!r})"
    if t == "union_tag_invalid":
        tag, names = ctx.get("tag"), ", ".join(_model_type(m) for m in TASK_MODELS.get(task, ()))
        if tag in _MODEL_TYPES and task is not None:
            return f"type {tag!r} does not fit task {task} (use one of {names})"
        return f"unknown model type {tag!r}; choose one of {ctx.get('expected_tags')}"
    if t == "union_tag_not_found":
        return "needs a 'type' key"
    msg = e["msg"].removeprefix("Value error, ")
    if "input" in e and t.endswith(("_type", "_parsing")):
        msg += f" (got {e['input']!r})"
    return msg


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a section")
        node = nxt
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str] | None) -> dict:
    """Apply `a.b.c=value` overrides; values are parsed as YAML (3 -> int, true -> bool, [1,2] -> list)."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. trainer.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    return tree


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (task, data, model, ...)")
    return tree


def validate(tree: dict, source: str = "") -> RunConfig:
    """The task's config (TASK_CONFIGS[tree['task']]) validated from a YAML tree, or one ConfigError naming every
    problem's YAML path."""
    task = tree.get("task")
    if task not in TASK_CONFIGS:
        if task is None:
            problems = ["task: required"]
        else:
            close = difflib.get_close_matches(str(task), TASK_CONFIGS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems = [f"task: unknown task {task!r}{hint}; choose one of {', '.join(TASK_CONFIGS)}"]
        if "data" not in tree:
            problems.append("data: required")
        where = f" {source}" if source else ""
        raise ConfigError(f"invalid config{where}:\n  " + "\n  ".join(problems))
    try:
        return TASK_CONFIGS[task].model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, task)) from None


def updated(cfg: RunConfig, changes: dict[str, Any], source: str = "") -> RunConfig:
    """A copy of the (frozen) config with dotted settings replaced, e.g. {"output.name": "x"}, validated again."""
    tree = cfg.model_dump(mode="json")
    for dotted, value in changes.items():
        _set_path(tree, dotted, value.as_posix() if isinstance(value, Path) else value)
    return validate(tree, source)


def overridden(cfg: RunConfig, items: list[str], source: str = "") -> RunConfig:
    """A copy of the (frozen) config with `--set a.b=v` items applied (YAML values), validated again."""
    return validate(apply_overrides(cfg.model_dump(mode="json"), items), source)


def _resolve_paths(tree: dict, folder: Path) -> None:
    """Relative data paths resolve against the config's folder when they exist there, else against the working
    directory."""
    def resolve(section: Any, key: str) -> None:
        p = section.get(key) if isinstance(section, dict) else None
        if isinstance(p, str) and not Path(p).is_absolute() and not Path(p).exists() and (folder / p).exists():
            section[key] = str(folder / p)

    data = tree.get("data")
    for split in ("train", "validation", "test"):
        resolve(data, split)
    rec = tree.get("recommendation")
    for table in ("user_features", "item_features"):
        resolve(rec.get(table) if isinstance(rec, dict) else None, "path")
    resolve(tree.get("embedding"), "corpus")


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, override and validate a YAML config into the resolved config the run uses: relative data paths
    resolved (see _resolve_paths), output.name defaulting to the config file's name."""
    path = Path(path)
    tree = apply_overrides(read_yaml(path), overrides)
    _resolve_paths(tree, path.parent)
    output = tree.get("output")
    if output is None or isinstance(output, dict) and output.get("name") is None:
        tree["output"] = {**(output or {}), "name": path.stem}
    return validate(tree, str(path))


def _in_effect(tree: dict, model: type | None = None) -> dict:
    """Leave out the settings that cannot take effect given the others (the workers of a run that is not
    distributed, the MLflow experiment without MLflow, the tokenizer of a model that brings its own n-gram
    featurizer, the momentum of an Adam run or the betas of an SGD one, how to redact when nothing is redacted)."""
    pre = tree.get("preprocessing")
    if model is not None and model.ngrams and isinstance(pre, dict):
        pre.pop("tokenizer", None)  # the n-gram featurizer reads the model's own settings (data/ngrams.py)
    trainer = tree.get("trainer")
    if isinstance(trainer, dict) and "optimizer" in trainer:
        if trainer["optimizer"] not in ("sgd", "rmsprop"):
            trainer.pop("momentum", None)  # read by sgd and rmsprop only (training/optim.py)
        if trainer["optimizer"] not in ("adam", "adamw"):
            trainer.pop("betas", None)
    clean = tree.get("data", {}).get("clean")
    if isinstance(clean, dict) and clean.get("redact") == []:
        clean.pop("redact_style", None)
        clean.pop("redact_ner", None)
    dist = tree.get("trainer", {}).get("distributed")
    if isinstance(dist, dict) and dist.get("backend") == "none":
        tree["trainer"]["distributed"] = {"backend": "none"}
    tracking = tree.get("tracking")
    if isinstance(tracking, dict) and tracking.get("mlflow") is None:
        tracking.pop("experiment", None)
    if tree.get("search") is None:
        tree.pop("search", None)
    return tree


def render(cfg: RunConfig) -> str:
    """The settings the run uses, defaults filled in, as YAML (the task's own sections only)."""
    return yaml.safe_dump(_in_effect(cfg.model_dump(mode="json"), type(cfg.model)), sort_keys=False,
                          allow_unicode=True)


def json_schema(task: str) -> dict:
    """The JSON Schema of one task's config (`luban config schema --task T`), for editors."""
    return TASK_CONFIGS[task].model_json_schema()
