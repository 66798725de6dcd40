"""`luban.load(RUN)`: a finished run directory back as a predictor, for the CLI, Python and the server.

`Predictor` is the public face of a run: it reads the run's config, picks the backend (the ONNX export, PyTorch, an
ensemble of member runs) and builds the task's predictor (a `luban.capabilities.TaskPredictor`: the task file's
inference class). What the run can do is what that task predictor implements: `Predicts`, `GeneratesText`,
`Recommends`, ... (luban.capabilities), checked with isinstance; a method of a capability the run lacks raises a
LubanError saying so.
"""

from __future__ import annotations

from pathlib import Path

from luban.capabilities import (CAPABILITIES, Chats, DecodesTogether, Embeds, Evaluates, Explains, GeneratesImages,
                                GeneratesText, Predicts, Recommends, ScoresTokens, StreamsTokens, TaskPredictor)
from luban.config import read_yaml, validate
from luban.errors import LubanError, RunError
from luban.rundir import check_finished
from luban.tasks import task_classes


class Predictor:
    """A loaded run: predict(inputs) -> list of JSON-ready dicts; evaluate(path) -> metrics; the generation,
    recommendation and image methods where the run has that capability. `task_predictor` is the task's own
    inference object (its model, tokenizer, label map) for exporters and compressors."""

    def __init__(self, run_dir: str | Path, device: str = "auto", backend: str = "auto"):
        from luban.compress.onnx_runtime import choose_backend, light_predictor

        self.run_dir = check_finished(run_dir)
        self.config = validate(read_yaml(self.run_dir / "config.yaml"), str(self.run_dir / "config.yaml"))
        light = light_predictor(self.run_dir, self.config, device, backend)  # onnxruntime + NumPy, no torch
        if light is not None:
            self.backend, self.task_predictor = "onnx", light
            return
        from luban.training.hardware import select_device, set_threads

        set_threads(self.config.trainer.num_threads)
        _, PredictorCls = task_classes(self.config.task)
        self.task_predictor: TaskPredictor
        if (self.run_dir / "model" / "ensemble.json").is_file():  # luban ensemble: combines its member runs
            from luban.tasks.ensemble import EnsemblePredictor, member_dirs

            members = [Predictor(d, device) for d in member_dirs(self.run_dir)]
            self.backend, self.task_predictor = "ensemble", EnsemblePredictor(self.run_dir, members)
            return
        # "onnx" when the run has an ONNX export (luban export / compress) and onnxruntime is installed
        self.backend = choose_backend(self.run_dir, PredictorCls, backend)
        kw = {"backend": self.backend} if PredictorCls.exportable else {}
        try:
            self.task_predictor = PredictorCls(self.config, self.run_dir / "model", select_device(device), **kw)
        except (OSError, ValueError, KeyError) as e:  # a damaged model/ folder: missing or unparsable files
            raise RunError(f"{self.run_dir / 'model'}: missing or corrupted model files "
                           f"({type(e).__name__}: {e})") from None

    @property
    def task(self) -> str:
        return self.config.task

    def supports(self, capability: type) -> bool:
        """Whether the run has a capability of luban.capabilities (Predicts, GeneratesText, Recommends, ...)."""
        return isinstance(self.task_predictor, capability)

    def _as(self, capability: type, what: str):
        """The task predictor as `capability`, or the LubanError saying this run cannot do `what`."""
        impl = self.task_predictor
        if not isinstance(impl, capability):
            name = next((k for k, c in CAPABILITIES.items() if c is capability), "")
            hint = impl.unsupported.get(name)
            raise LubanError(hint or f"{self.run_dir}: task {self.task} does not {what}")
        return impl

    def predict(self, inputs, on_error: str = "fail", **kw) -> list[dict]:
        """One output per input. An input the model cannot take (an empty text, a missing image) raises a
        DataError naming its position (on_error="fail", the default for in-memory inputs), or gets an output
        {"error": "empty text"} in its place (on_error="error-row")."""
        impl = self._as(Predicts, "predict")
        if on_error == "fail":
            return impl.predict(inputs, **kw)
        from luban.lifecycle.predict_file import predict_chunk

        if on_error != "error-row":
            raise LubanError("predict(): on_error is 'fail' or 'error-row' (predict_file also takes 'skip-row')")
        if isinstance(inputs, (str, dict)) or not isinstance(inputs, (list, tuple)) and not _is_frame(inputs):
            inputs = [inputs]
        return [{"error": r} if isinstance(r, str) else r for r in predict_chunk(impl, inputs, **kw)]

    def read_inputs(self, path: str | Path) -> list:
        """The inputs a file or folder holds, read as predict() takes them (the file's text column, images...)."""
        return self._as(Predicts, "predict").read_inputs(path)

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

    def evaluate(self, path: str | Path) -> dict:
        from luban.training.progress import stage

        with stage(f"evaluate {Path(path).name}"):  # the model's batches show their own count and ETA
            return self._as(Evaluates, "evaluate").evaluate(path)

    def override_data(self, items: list[str], where: str) -> None:
        """`--set data.*=...` on how input files are read (encoding, delimiter, ...), for every config that reads
        them (an ensemble's members too): each is replaced by a validated copy (configs are frozen)."""
        from luban.config import overridden

        same = self.config is self.task_predictor.cfg
        self.task_predictor.override_data(items, where)
        self.config = self.task_predictor.cfg if same else overridden(self.config, items, where)

    def embed(self, texts: list[str], kind: str = "query", batch_size: int | None = None, progress: bool = False):
        """Text embedding: a float32 array (len(texts), dim) of unit vectors; kind "query" or "passage" picks the
        model's own prefix (e5's "query: " / "passage: ")."""
        return self._as(Embeds, "embed texts").embed(texts, kind, batch_size, progress)

    def generate_text(self, prompt: str, **knobs) -> dict:
        """Text generation / translation / summarization: one output for `prompt`, with decoding knobs
        (max_new_tokens, temperature, top_k, top_p, repetition_penalty, num_beams, length_penalty, stop, seed)."""
        return self._as(GeneratesText, "generate text; use predict()").generate_text(prompt, **knobs)

    def stream_text(self, prompt: str, **knobs):
        """Like generate_text, yielding the text piece by piece as tokens are decoded."""
        return self._as(GeneratesText, "generate text; use predict()").stream_text(prompt, **knobs)

    def chat(self, messages: list[dict], **knobs) -> dict:
        """Text generation: the assistant's reply to `messages` ([{role, content}, ...])."""
        return self._as(Chats, "chat").chat(messages, **knobs)

    def stream_chat(self, messages: list[dict], **knobs):
        return self._as(Chats, "chat").stream_chat(messages, **knobs)

    def stream_events(self, prompt: str | None = None, messages: list[dict] | None = None, **knobs):
        """Text generation, step by step: dicts {"text", "token" (id or None), "finish_reason" (None until the
        last: "eos", "stop" or "length")}. Tasks without step events stream text pieces, then one last event
        whose finish_reason is None (unknown)."""
        return self._as(GeneratesText, "generate text; use predict()").stream_events(prompt, messages, **knobs)

    def stream_events_batch(self, requests: list[dict]):
        """Text generation, several requests ({"prompt": ...} or {"messages": [...]}, plus knobs each) decoded
        together, one forward per step: an object with step() -> [(request index, event dict or exception)],
        cancel(i), done and close(). Only where capabilities()["batch_events"]."""
        return self._as(DecodesTogether, "decode requests together").stream_events_batch(requests)

    def prompt_tokens(self, prompt: str | None = None, messages: list[dict] | None = None, **kw) -> int | None:
        """Tokens the model reads for a prompt or conversation (None when the task cannot say); `tools` (OpenAI
        function definitions) where the model renders them."""
        impl = self.task_predictor
        return impl.prompt_tokens(prompt, messages, **kw) if isinstance(impl, GeneratesText) else None

    def score_prompt(self, prompt, top: int = 0) -> dict:
        """A prompt's token ids and each token's log-probability given those before it (None for the first), with
        the `top` most likely tokens at each position."""
        return self._as(ScoresTokens, "score tokens").score_prompt(prompt, top)

    def encode_prompt(self, prompt: str) -> list[int]:
        """A text prompt's token ids for plain completion (no chat template)."""
        return self._as(ScoresTokens, "score tokens").encode_prompt(prompt)

    def token_pieces(self, ids: list[int]) -> list[tuple[str, bytes]]:
        """Each token id's own text and exact bytes."""
        return self._as(ScoresTokens, "score tokens").token_pieces(ids)

    def context_length(self) -> int | None:
        """The model's context window in tokens (None when it has none or cannot say)."""
        impl = self.task_predictor
        return impl.context_length() if isinstance(impl, ScoresTokens) else None

    def chat_tools(self) -> bool:
        """Whether the model's chat template renders OpenAI `tools`."""
        impl = self.task_predictor
        return isinstance(impl, ScoresTokens) and impl.chat_tools()

    def default_max_new_tokens(self) -> int | None:
        """Text generation: the run's generation.max_new_tokens (what a request that does not say gets)."""
        impl = self.task_predictor
        return impl.default_max_new_tokens() if isinstance(impl, GeneratesText) else None

    def capabilities(self) -> dict:
        """What this run can do, for servers and UIs that must not branch on task names.

        `inputs` is what predict() takes, as the task predictor declares it (`input_kind`): "text" (strings),
        "image" (images: arrays / PIL images), "audio" ((waveform, rate) pairs), "json" (JSON values such as
        records or ids), None (no predict, e.g. image generation); "unknown" when a task declares nothing. The
        booleans say which of the facade's other methods apply; `predict_options` are the keyword arguments
        predict() accepts (e.g. top_k); `labels` the classes when the run has them."""
        import inspect

        impl = self.task_predictor
        kind = impl.input_kind if isinstance(impl, Predicts) else None
        options = []
        if kind is not None:
            params = inspect.signature(impl.predict).parameters
            options = [n for n, p in params.items() if n in ("top_k", "k") and p.kind is not p.VAR_KEYWORD]
        labels = impl.class_labels()
        return {"task": self.task, "backend": self.backend, "predict": kind is not None, "inputs": kind,
                "predict_options": options,
                "generate_text": self.supports(GeneratesText), "stream_text": self.supports(GeneratesText),
                "chat": self.supports(Chats), "stream_events": self.supports(StreamsTokens),
                "batch_events": self.supports(DecodesTogether), "generate_images": self.supports(GeneratesImages),
                "score_tokens": self.supports(ScoresTokens),
                "recommend": self.supports(Recommends), "similar_items": self.supports(Recommends),
                "embed": self.supports(Embeds),
                "explain": self.supports(Explains),
                "labels": [str(x) for x in labels] if labels is not None else None}

    def generate(self, **kw):
        """Generative tasks (image generation): samples from the trained model."""
        return self._as(GeneratesImages, "generate; use predict()").generate(**kw)

    def _recommender(self) -> Recommends:
        return self._as(Recommends, "recommend; use predict()")

    def explain(self, inputs, target: str | None = None) -> list[dict]:
        """Per input: its prediction and the scores of what drove it toward `target` (default: the predicted
        class): tokens and characters of a text, features of a table row, pixels of an image (luban.explain).
        Needs the PyTorch weights (load with backend="torch" when the run has an ONNX export)."""
        return self._as(Explains, "explain its predictions").explain(inputs, target=target)

    def recommend(self, user, k: int | None = None, history=None, exclude_seen: bool | None = None,
                  features: dict | None = None) -> dict:
        """Recommendation: the top-k items for `user` ({user, strategy, items: [{item, score}]}). `history`: items
        just interacted with (a list or "a,b,c"); an unknown user falls back to the history, then `features`
        (two-tower), then popularity; `strategy` says which served the answer."""
        return self._recommender().recommend(user, k=k, history=history, exclude_seen=exclude_seen,
                                              features=features)

    def recommend_all(self, output: str | Path | None = None, k: int | None = None,
                      exclude_seen: bool | None = None):
        """Recommendation: top-k for every user of the run; written as JSON lines to `output` (returns the count)
        or returned as a list."""
        rows = self._recommender().recommend_all(k=k, exclude_seen=exclude_seen)
        if output is None:
            return list(rows)
        import json

        n = 0
        with open(output, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
        return n

    def similar_items(self, item, k: int | None = None) -> dict:
        """Recommendation: the k items most similar to `item` ({item, strategy, items: [{item, score}]})."""
        return self._recommender().similar_items(item, k=k)

    # the habits of the ecosystem: a pipeline is called, a classifier has predict_proba and labels
    def __call__(self, inputs, **kw) -> list[dict]:
        """The same as predict(inputs, **kw) (as a Hugging Face pipeline is called)."""
        return self.predict(inputs, **kw)

    @property
    def labels(self) -> list[str] | None:
        """The classes in the model's order (classification runs), else None."""
        labels = self.task_predictor.class_labels()
        return [str(x) for x in labels] if labels is not None else None

    def predict_proba(self, inputs):
        """Classification: an (inputs x classes) numpy array of class probabilities, columns in `labels` order
        (as predict() reports them, rounded to 6 decimals)."""
        import numpy as np

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
        return (f"Predictor(task={self.task!r}, model={self.config.model.type!r}{shown}, "
                f"backend={self.backend!r}, run={str(self.run_dir)!r})")


def load(run_dir: str | Path, device: str = "auto", backend: str = "auto") -> Predictor:
    """A run's predictor. backend: "auto" (the ONNX export when the run has one, else PyTorch), "torch" (force
    PyTorch), "onnx" (insist on the export). An encoder folder or a starter encoder name (no run) loads as a
    text_embedding model (luban.embedding.load_encoder)."""
    if is_encoder_ref(run_dir) or _run_task(run_dir) == "text_embedding":
        return EncoderModel(run_dir, device, backend)
    return Predictor(run_dir, device, backend)


def _run_task(run_dir) -> str | None:
    import json

    try:
        return json.loads((Path(run_dir) / "model" / "processor.json").read_text(encoding="utf-8")).get("task")
    except (OSError, ValueError, AttributeError):
        return None


def is_encoder_ref(ref) -> bool:
    """A starter encoder name or an HF encoder folder (config.json, not a luban run), not a run directory."""
    from luban.hub.catalog import CATALOG

    text = str(ref)
    if text in CATALOG:
        entry = CATALOG[text]
        return "embeddings" in entry.task or bool(entry.module)
    p = Path(text)
    return (p.is_dir() and (p / "config.json").is_file() and not (p / "manifest.json").is_file()
            and not (p / "config.yaml").is_file())


class EncoderModel(Predictor):
    """An encoder as a model: a text_embedding run, or an encoder folder / starter name served without a run (with
    the text_embedding task's default settings). Texts in, vectors out (Embeds; predict() -> {"embedding",
    "tokens"}). backend: torch, or onnx / onnx-int8 (the encoder's ONNX export, luban.embedding.export)."""

    def __init__(self, ref: str | Path, device: str = "auto", backend: str = "auto", max_length: int | None = None):
        from luban.embedding.encoder import load_encoder
        from luban.tasks.text_embedding import TextEmbeddingPredictor

        encoder = load_encoder(ref, device=device, backend=backend, max_length=max_length)
        if encoder.run is not None:
            self.run_dir = encoder.run
            self.config = validate(read_yaml(self.run_dir / "config.yaml"), str(self.run_dir / "config.yaml"))
        else:
            self.run_dir = encoder.folder
            self.config = validate({"task": "text_embedding",
                                    "data": {"train": str(encoder.folder), "columns": {"query": "query",
                                                                                        "positive": "positive"}},
                                    "model": {"path": str(ref)}, "output": {"name": encoder.name}}, str(ref))
        self.backend = encoder.backend
        self.task_predictor = TextEmbeddingPredictor.from_encoder(encoder, self.config)


def _is_frame(inputs) -> bool:
    import sys

    pd = sys.modules.get("pandas")  # a table of inputs can only come from an imported pandas
    return pd is not None and isinstance(inputs, (pd.DataFrame, pd.Series))
