"""What a loaded run can do: the task predictor's base class and its capabilities as typed interfaces.

A task's inference side is one `TaskPredictor` subclass (built from a run directory: config, model/ folder,
device, backend) that also inherits the capabilities it implements:

    class TextClassificationPredictor(TextInputs, TaskPredictor, Predicts, Evaluates, ...)

`luban.load()` wraps it in `luban.Predictor` (the public API: predict with on_error, predict_file, predict_proba,
capabilities(), repr); the CLI, the server and that API ask `isinstance(task_predictor, GeneratesText)` and so on,
never the task's name or its attributes. Each capability is an ABC: a class that declares one and misses a method
fails when it is built, not when a client first calls it. A new kind of run (embeddings, retrieval) adds its
capability here (e.g. `Embeds.embed(texts) -> vectors`), and the API and server routes that check for it.

Torch-free: predictors that run without PyTorch (the ONNX runtime path) share this base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator


class TaskPredictor:
    """Inference side of a task: loaded from a run directory, returns JSON-ready dicts.

    A task whose predictor sets `exportable = True` implements `export_spec() -> ExportSpec` and builds its model
    through `load_model(build)`: that is what lets `luban export` / `luban compress` work on it and `luban.load` run it on
    the ONNX runtime (backend "onnx") or in bf16 with the same preprocessing and postprocessing."""

    task = ""
    exportable = False
    # messages for what this run cannot do, by capability ("predict", "evaluate"), when a hint helps the user more
    # than "task T does not predict"
    unsupported: ClassVar[dict[str, str]] = {}

    model: Any  # the runtime model (a torch module, or the ONNX export wrapped as one), set by the subclass

    def __init__(self, cfg, folder: Path, device, backend: str = "torch"):
        self.cfg, self.folder, self.device, self.backend = cfg, folder, device, backend

    def load_model(self, build: Callable[[], Any]):
        """The run's model for inference: `build()` + the saved weights on self.device (in bf16 for a bf16-compressed
        run), or the ONNX export wrapped as a module (backend "onnx"); either is called like the torch model."""
        from luban.compress.backends import runtime_model

        return runtime_model(self, build)

    def export_hf(self, folder: Path) -> bool:
        """Write the model in Hugging Face `save_pretrained` layout; False when it has no HF backbone."""
        return False

    def parity_rows(self, path: Path):
        """The rows of a (short) data file cleaned as at training, in the form predict() takes: the sample `luban
        export` checks an export on without preparing the whole training set again. None: the task has no such
        path (export then prepares the task's data, as compression does)."""
        return None

    def class_labels(self) -> list[str] | None:
        """The classes in the model's output order (classification, detection, conditional GANs), else None."""
        return None

    def override_data(self, items: list[str], where: str) -> None:
        """`--set data.*=...` on how input files are read (encoding, delimiter, ...): the run's config is replaced
        by a validated copy with those settings (configs are frozen; luban.config.overridden)."""
        from luban.config import overridden

        self.cfg = overridden(self.cfg, items, where)

    # row-aligned file prediction (luban.lifecycle.predict_file): a predictor that defines
    # frame_inputs(frame) -> (inputs, column) has its input files streamed chunk by chunk; input_problem(x) says
    # why one input cannot be predicted (None: it can). Without frame_inputs, read_inputs(path) reads the file whole.
    frame_inputs: Callable | None = None
    media_suffixes: tuple[str, ...] = ()  # a file with one of these suffixes given as the input file is one input

    def input_problem(self, x) -> str | None:
        return None


# ---------------------------------------------------------------------------------------------------- capabilities


class Predicts(ABC):
    """predict(inputs, **options) -> one JSON-ready dict per input. `input_kind` says what the inputs are (the
    server decodes requests into them): "text" (strings), "image" (arrays / PIL images), "audio" ((waveform, rate)
    pairs), "json" (records, ids); "unknown" when a task says nothing. Keyword options a task's predict() declares
    by name (top_k, k) are the options clients may send."""

    input_kind: ClassVar[str] = "unknown"

    @abstractmethod
    def predict(self, inputs, **options) -> list[dict]: ...

    @abstractmethod
    def read_inputs(self, path: str | Path) -> list:
        """The inputs a file (or folder) holds, in the form predict() takes."""


class Evaluates(ABC):
    @abstractmethod
    def evaluate(self, path: str | Path) -> dict:
        """The task's metrics on a labelled file (what `luban evaluate` prints)."""


class GeneratesText(ABC):
    """Text out for a prompt (text generation, translation, summarization), with decoding knobs."""

    # the output continues the prompt (a causal LM) rather than replacing it (seq2seq): `luban generate` prints both
    continues_prompt: ClassVar[bool] = False

    @abstractmethod
    def generate_text(self, prompt: str, **knobs) -> dict: ...

    @abstractmethod
    def stream_text(self, prompt: str, **knobs) -> Iterator[str]: ...

    @abstractmethod
    def prompt_tokens(self, prompt: str | None = None, messages: list[dict] | None = None) -> int | None:
        """Tokens the model reads for a prompt or a conversation (usage counts); None when it cannot say."""

    def default_max_new_tokens(self) -> int:
        """How many tokens a request that does not say generates at most: the run's generation.max_new_tokens."""
        return self.cfg.generation.max_new_tokens

    def stream_events(self, prompt: str | None = None, messages: list[dict] | None = None, **knobs):
        """Step by step: dicts {"text", "token" (id or None), "finish_reason"}. Without per-token events
        (`StreamsTokens`): the text pieces, then one last event whose finish_reason is None (unknown)."""
        if messages is not None:
            if not isinstance(self, Chats):
                from luban.errors import LubanError

                raise LubanError(f"task {self.task} does not chat; send a prompt")
            pieces = self.stream_chat(messages, **knobs)
        else:
            pieces = self.stream_text(prompt, **knobs)
        for piece in pieces:
            yield {"text": piece, "token": None, "finish_reason": None}
        yield {"text": "", "token": None, "finish_reason": None}


class Chats(GeneratesText):
    """The assistant's reply to a conversation ([{role, content}, ...])."""

    @abstractmethod
    def chat(self, messages: list[dict], **knobs) -> dict: ...

    @abstractmethod
    def stream_chat(self, messages: list[dict], **knobs) -> Iterator[str]: ...


class StreamsTokens(GeneratesText):
    """stream_events gives one event per decoded token, with its id, and the finish reason (eos, stop, length)."""

    @abstractmethod
    def stream_events(self, prompt: str | None = None, messages: list[dict] | None = None, **knobs): ...


class DecodesTogether(GeneratesText):
    """Several requests ({"prompt"} or {"messages"}, plus knobs each) decoded together, one forward per step."""

    @abstractmethod
    def stream_events_batch(self, requests: list[dict]):
        """An object with step() -> [(request index, event dict or exception)], cancel(i), done and close()."""


class ScoresTokens(GeneratesText):
    """Log-probabilities: of a prompt's own tokens, and of each generated token (the `logprobs` knob of
    stream_events: events then carry {"logprob": {"logprob", "top": [(id, logprob)]}}), from the model's raw
    logits."""

    @abstractmethod
    def score_prompt(self, prompt, top: int = 0) -> dict:
        """{"ids": the prompt's token ids, "logprobs": [None, {"logprob", "top"}, ...]} (one per id)."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> list[int]:
        """A text prompt's ids for plain completion (the tokenizer's prefix + the text; no chat template)."""

    @abstractmethod
    def token_pieces(self, ids: list[int]) -> list[tuple[str, bytes]]:
        """Each token id's own text and exact bytes."""

    @abstractmethod
    def context_length(self) -> int | None:
        """The longest prompt + generation the model attends over (None: no limit)."""

    def chat_tools(self) -> bool:
        """Whether chat requests may carry OpenAI `tools` (the chat template renders them)."""
        return False


class Recommends(ABC):
    @abstractmethod
    def recommend(self, user, k: int | None = None, history=None, exclude_seen: bool | None = None,
                  features: dict | None = None) -> dict: ...

    @abstractmethod
    def recommend_all(self, k: int | None = None, exclude_seen: bool | None = None) -> Iterator[dict]: ...

    @abstractmethod
    def similar_items(self, item, k: int | None = None) -> dict: ...


class GeneratesImages(ABC):
    @abstractmethod
    def generate(self, n: int = 64, label=None, seed: int = 0, out: str | Path | None = None,
                 ncols: int | None = None) -> dict: ...


class Embeds(ABC):
    """Texts -> unit vectors (luban.embedding.Encoder's contract): a text_embedding run, or an encoder folder /
    starter name loaded as a model. `kind` picks the model's own prefix ("query" or "passage")."""

    @abstractmethod
    def embed(self, texts: list[str], kind: str = "query", batch_size: int | None = None,
              progress: bool = False):
        """float32 array (len(texts), dim), rows L2-normalized, row i for texts[i]."""

    @abstractmethod
    def encoder(self):
        """The luban.embedding.Encoder behind it (dim, name, fingerprint, info(), count_tokens)."""


class Explains(ABC):
    """explain(inputs, target=None) -> per input its prediction and what in it drove the prediction toward `target`
    (default: the predicted class): token / character scores for texts, feature scores for table rows, a pixel map
    for images (luban.explain)."""

    @abstractmethod
    def explain(self, inputs, target: str | None = None) -> list[dict]: ...


# every capability a run may have, by the name capabilities() and the server use
CAPABILITIES: dict[str, type] = {"predict": Predicts, "evaluate": Evaluates, "generate_text": GeneratesText,
                                 "chat": Chats, "stream_events": StreamsTokens, "batch_events": DecodesTogether,
                                 "score_tokens": ScoresTokens, "explain": Explains,
                                 "recommend": Recommends, "generate_images": GeneratesImages, "embed": Embeds}
