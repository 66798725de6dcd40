"""What a loaded run can do: the task predictor's base class and its capabilities as typed interfaces.

A task's inference side is one `TaskPredictor` subclass (built from a run directory: config, model/ folder,
device, backend) that also inherits the capabilities it implements:

    class TextClassificationPredictor(TextInputs, TaskPredictor, Predicts, Evaluates, ...)

`luban.load()` returns it: `luban.Predictor` is `TaskPredictor`, the public API every run shares (capabilities(),
supports(), labels, predict_proba, repr, calling it); each capability brings its own public methods (`Predicts`:
predict with on_error, predict_file, write_predictions; `Evaluates`: evaluate, with progress) over the method a
task implements (`predict_inputs`, `evaluate_file`, ...). The CLI, the server and that API ask
`isinstance(predictor, GeneratesText)` and so on, never the task's name or its attributes; a method of a
capability the run lacks raises the LubanError saying so. Each capability is an ABC: a class that declares one and
misses a method fails when it is built, not when a client first calls it. A new kind of run adds its capability
here (e.g. `Embeds.embed(texts) -> vectors`), and the API and server routes that check for it.

Torch-free: predictors that run without PyTorch (the ONNX runtime path) share this base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator


class TaskPredictor:
    """Inference side of a task, and a loaded run's public face (`luban.load(RUN)` returns it; `luban.Predictor`):
    loaded from a run directory, returns JSON-ready dicts; what else it does is the capabilities it inherits.

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
        self.run_dir = Path(folder).parent  # the run (luban.load sets it: a run's model/ folder is in it)

    # the public API of every loaded run ---------------------------------------------------------------------
    @property
    def config(self):
        """The run's (frozen) config."""
        return self.cfg

    @config.setter
    def config(self, cfg) -> None:
        self.cfg = cfg

    @property
    def task_predictor(self) -> "TaskPredictor":
        """Itself (luban.load once returned a wrapper around it; code that asks for the task's predictor gets it)."""
        return self

    def supports(self, capability: type) -> bool:
        """Whether the run has a capability (Predicts, GeneratesText, Recommends, ...): isinstance."""
        return isinstance(self, capability)

    def refusal(self, capability: type, what: str):
        """The LubanError saying this run cannot do `what` (the task's own hint where it has one)."""
        from luban.errors import LubanError

        name = next((k for k, c in CAPABILITIES.items() if c is capability), "")
        return LubanError(self.unsupported.get(name) or f"{self.run_dir}: task {self.task} does not {what}")

    def __getattr__(self, name: str):
        """A method of a capability this run lacks (normal lookup found none): calling it raises the LubanError
        saying what the run cannot do, or, for what servers ask of any model, gives the neutral answer."""
        if name in NEUTRAL:
            answer = NEUTRAL[name]
            return lambda *args, **kw: answer
        if name in REFUSED:
            capability, what = REFUSED[name]

            def refuse(*args, **kw):
                raise self.refusal(capability, what)
            return refuse
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def capabilities(self) -> dict:
        """What this run can do, for servers and UIs that must not branch on task names.

        `inputs` is what predict() takes, as the task predictor declares it (`input_kind`): "text" (strings),
        "image" (images: arrays / PIL images), "audio" ((waveform, rate) pairs), "json" (JSON values such as
        records or ids), None (no predict, e.g. image generation); "unknown" when a task declares nothing. The
        booleans say which of the other methods apply; `predict_options` are the keyword arguments predict()
        accepts (e.g. top_k); `labels` the classes when the run has them."""
        import inspect

        kind = self.input_kind if isinstance(self, Predicts) else None
        options = []
        if kind is not None:
            params = inspect.signature(self.predict_inputs).parameters
            options = [n for n, p in params.items() if n in ("top_k", "k") and p.kind is not p.VAR_KEYWORD]
        labels = self.class_labels()
        has = self.supports
        return {"task": self.task, "backend": self.backend, "predict": kind is not None, "inputs": kind,
                "predict_options": options,
                "generate_text": has(GeneratesText), "stream_text": has(GeneratesText), "chat": has(Chats),
                "stream_events": has(StreamsTokens), "batch_events": has(DecodesTogether),
                "generate_images": has(GeneratesImages), "score_tokens": has(ScoresTokens),
                "recommend": has(Recommends), "similar_items": has(Recommends), "embed": has(Embeds),
                "explain": has(Explains),
                "labels": [str(x) for x in labels] if labels is not None else None}

    # the habits of the ecosystem: a pipeline is called, a classifier has predict_proba and labels
    def __call__(self, inputs, **kw) -> list[dict]:
        """The same as predict(inputs, **kw) (as a Hugging Face pipeline is called)."""
        return self.predict(inputs, **kw)

    @property
    def labels(self) -> list[str] | None:
        """The classes in the model's order (classification runs), else None."""
        labels = self.class_labels()
        return [str(x) for x in labels] if labels is not None else None

    def predict_proba(self, inputs):
        """Classification: an (inputs x classes) numpy array of class probabilities, columns in `labels` order
        (as predict() reports them, rounded to 6 decimals)."""
        import numpy as np

        from luban.errors import LubanError

        labels = self.labels
        if not labels:
            raise LubanError(f"{self.run_dir}: task {self.task} has no class probabilities; use predict()")
        rows = self.predict(inputs)
        if rows and "probabilities" not in rows[0]:
            raise LubanError(f"{self.run_dir}: task {self.task} has no class probabilities; use predict()")
        return np.array([[r["probabilities"].get(c, 0.0) for c in labels] for r in rows],
                        dtype=np.float64).reshape(len(rows), len(labels))

    def __repr__(self) -> str:
        labels = self.labels
        shown = "" if labels is None else (f", labels={labels!r}" if len(labels) <= 10 else
                                            f", labels={labels[:10]!r} + {len(labels) - 10} more")
        return (f"Predictor(task={self.task!r}, model={self.cfg.model.type!r}{shown}, "
                f"backend={self.backend!r}, run={str(self.run_dir)!r})")

    # what tasks implement -------------------------------------------------------------------------------------

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
    """predict(inputs, **options) -> one JSON-ready dict per input (the task implements predict_inputs).
    `input_kind` says what the inputs are (the server decodes requests into them): "text" (strings), "image"
    (arrays / PIL images), "audio" ((waveform, rate) pairs), "json" (records, ids); "unknown" when a task says
    nothing. Keyword options a task's predict_inputs() declares by name (top_k, k) are the options clients may
    send."""

    input_kind: ClassVar[str] = "unknown"

    @abstractmethod
    def predict_inputs(self, inputs, **options) -> list[dict]:
        """One output per input; an input the model cannot take raises a DataError naming its position."""

    @abstractmethod
    def read_inputs(self, path: str | Path) -> list:
        """The inputs a file (or folder) holds, in the form predict() takes."""

    def predict(self, inputs, on_error: str = "fail", **options) -> list[dict]:
        """One output per input. An input the model cannot take (an empty text, a missing image) raises a
        DataError naming its position (on_error="fail", the default for in-memory inputs), or gets an output
        {"error": "empty text"} in its place (on_error="error-row")."""
        if on_error == "fail":
            return self.predict_inputs(inputs, **options)
        from luban.errors import LubanError
        from luban.lifecycle.predict_file import predict_chunk

        if on_error != "error-row":
            raise LubanError("predict(): on_error is 'fail' or 'error-row' (predict_file also takes 'skip-row')")
        if isinstance(inputs, (str, dict)) or not isinstance(inputs, (list, tuple)) and not _is_frame(inputs):
            inputs = [inputs]
        return [{"error": r} if isinstance(r, str) else r for r in predict_chunk(self, inputs, **options)]

    def predict_file(self, path: str | Path, on_error: str = "error-row", id_column=None, keep_columns=None,
                     keep_input: bool = False, **kw) -> list[dict]:
        """One output row per input row, in order, each carrying its id (`id_column`, else "row": the 0-based row
        number) and the `keep_columns` (or every input column: keep_input). An unusable row gets
        {"row": i, "error": "empty text"} (on_error="error-row", the default), is left out with a count on stderr
        ("skip-row"), or raises a DataError naming file, line and field ("fail")."""
        from luban.lifecycle.predict_file import Summary, predict_rows

        summary = Summary(str(path))
        rows = [r for chunk in predict_rows(self, path, on_error, id_column, keep_columns, keep_input,
                                            summary=summary, **kw) for r in chunk]
        if summary.errors or summary.skipped:
            import sys

            print(summary.message(), file=sys.stderr)
        return rows

    def write_predictions(self, path: str | Path, output: str | Path | None, on_error: str = "error-row",
                          id_column=None, keep_columns=None, keep_input: bool = False,
                          chunk_rows: int | None = None, **kw):
        """predict_file streamed to `output` (.jsonl, .csv, .tsv or .parquet by extension; None: JSON lines on
        stdout) chunk by chunk, memory flat in the input's size; returns the Summary (rows, predictions, error
        rows, skipped rows). On any error no output file is left behind."""
        from luban.lifecycle.predict_file import CHUNK_ROWS, Summary, predict_rows, write_predictions

        summary = Summary(str(path))
        chunks = predict_rows(self, path, on_error, id_column, keep_columns, keep_input,
                              chunk_rows=chunk_rows or CHUNK_ROWS, summary=summary, **kw)
        write_predictions(chunks, output)
        return summary


def _is_frame(inputs) -> bool:
    import sys

    pd = sys.modules.get("pandas")  # a table of inputs can only come from an imported pandas
    return pd is not None and isinstance(inputs, (pd.DataFrame, pd.Series))


class Evaluates(ABC):
    @abstractmethod
    def evaluate_file(self, path: str | Path) -> dict:
        """The task's metrics on a labelled file."""

    def evaluate(self, path: str | Path) -> dict:
        """The task's metrics on a labelled file (what `luban evaluate` prints), with progress."""
        from luban.training.progress import stage

        with stage(f"evaluate {Path(path).name}"):  # the model's batches show their own count and ETA
            return self.evaluate_file(path)


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

    def generation_defaults(self):
        """The run's own decoding settings, its `generation:` section (the task's fields of
        luban.config.GenerationSettings: max_new_tokens, do_sample, temperature, top_k, top_p, stop, seed, ...):
        what a request that names none gets."""
        return self.cfg.generation

    def default_max_new_tokens(self) -> int:
        """How many tokens a request that does not say generates at most: the run's generation.max_new_tokens."""
        return self.generation_defaults().max_new_tokens

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
    def recommend_every_user(self, k: int | None = None, exclude_seen: bool | None = None) -> Iterator[dict]:
        """Top-k for every user of the run, in id order."""

    def recommend_all(self, output: str | Path | None = None, k: int | None = None,
                      exclude_seen: bool | None = None):
        """Top-k for every user of the run; written as JSON lines to `output` (returns the count) or returned as
        a list."""
        rows = self.recommend_every_user(k=k, exclude_seen=exclude_seen)
        if output is None:
            return list(rows)
        import json

        n = 0
        with open(output, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        return n

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


# what calling a capability's method on a run without it does (TaskPredictor.__getattr__): a LubanError saying what
# the run cannot do ...
REFUSED: dict[str, tuple[type, str]] = {
    **dict.fromkeys(("predict", "predict_inputs", "read_inputs", "predict_file", "write_predictions"),
                    (Predicts, "predict")),
    **dict.fromkeys(("evaluate", "evaluate_file"), (Evaluates, "evaluate")),
    **dict.fromkeys(("generate_text", "stream_text", "stream_events", "generation_defaults"),
                    (GeneratesText, "generate text; use predict()")),
    **dict.fromkeys(("chat", "stream_chat"), (Chats, "chat")),
    "stream_events_batch": (DecodesTogether, "decode requests together"),
    **dict.fromkeys(("score_prompt", "encode_prompt", "token_pieces"), (ScoresTokens, "score tokens")),
    **dict.fromkeys(("recommend", "recommend_all", "recommend_every_user", "similar_items"),
                    (Recommends, "recommend; use predict()")),
    "generate": (GeneratesImages, "generate; use predict()"),
    "embed": (Embeds, "embed texts"),
    "explain": (Explains, "explain its predictions"),
}
# ... or, for what a server asks of any model, the neutral answer
NEUTRAL: dict[str, Any] = {"prompt_tokens": None, "context_length": None, "chat_tools": False,
                           "default_max_new_tokens": None}

# every capability a run may have, by the name capabilities() and the server use
CAPABILITIES: dict[str, type] = {"predict": Predicts, "evaluate": Evaluates, "generate_text": GeneratesText,
                                 "chat": Chats, "stream_events": StreamsTokens, "batch_events": DecodesTogether,
                                 "score_tokens": ScoresTokens, "explain": Explains,
                                 "recommend": Recommends, "generate_images": GeneratesImages, "embed": Embeds}
