"""`luban embed RUN|MODEL`: the parser and the verb (torch-free until the model loads)."""

from __future__ import annotations

import sys


def _cmd_embed(a):
    from luban.embedding.encoder import KINDS
    from luban.embedding.files import embed_file, embed_texts, output_kind
    from luban.errors import LubanError

    if not a.text and not a.input:
        raise LubanError("embed: give --input FILE or --text \"...\" (repeatable)")
    if a.text and a.input:
        raise LubanError("embed: give --input or --text, not both")
    if a.input and not a.output:
        raise LubanError("embed: --input needs --output (.parquet, .npy or .jsonl)")
    if a.output:
        output_kind(a.output)  # an unknown extension is refused before the model loads
    if a.kind not in KINDS:
        raise LubanError(f"--kind {a.kind}: choose {' or '.join(KINDS)}")
    ray = a.backend == "ray"
    if ray:
        from luban.lifecycle.ray_pool import check_backend

        if not a.input:
            raise LubanError("embed --backend ray: give --input FILE and --output FILE")
        check_backend("ray", a.workers, a.address)  # before the model loads
    from luban.predictor import load_encoder_model

    model = load_encoder_model(a.model, device="cpu" if ray else a.device, backend="auto" if ray else a.backend,
                               max_length=a.max_length)
    if a.column is not None:
        from luban.config import updated

        model.cfg = updated(model.cfg, {"data.columns.text": a.column})
    if a.batch_size is not None:
        from luban.config import updated

        model.cfg = updated(model.cfg, {"embedding.batch_size": a.batch_size})
    enc = model.encoder()
    print(f"embed: {enc.name} ({enc.dim} dims, {enc.spec.pooling} pooling, {enc.backend}; {a.kind} prefix "
          f"{enc.spec.prefix(a.kind)!r})", file=sys.stderr)
    if a.text:
        n = embed_texts(model, a.text, a.output, a.kind)
        if a.output:
            print(f"wrote {n} vectors to {a.output}", file=sys.stderr)
        return
    keep = [c.strip() for c in a.keep_columns.split(",") if c.strip()] if a.keep_columns else None
    s = embed_file(model, a.input, a.output, a.kind, a.on_error, a.id_column, keep, a.keep_input, a.chunk_rows,
                   ray={"workers": a.workers, "address": a.address, "ref": a.model} if ray else None)
    print(s.message(a.output).replace("prediction", "vector"), file=sys.stderr)


def add_parser(sub) -> None:
    e = sub.add_parser("embed", help="text embeddings: one vector per input row (a text_embedding run, an encoder "
                       "folder or a starter name such as starter-e5-small)")
    e.add_argument("model", help="a text_embedding run, an HF encoder folder, or starter-e5-small / starter-minilm")
    e.add_argument("--input", help="a file of texts (.txt: one per line; csv/tsv/jsonl/parquet: the text column)")
    e.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    e.add_argument("--output", help=".parquet (id + embedding + tokens), .npy (float32 matrix, rows aligned) or "
                   ".jsonl; --text without it prints JSON lines")
    e.add_argument("--kind", default="passage", help="passage (documents to search; default) or query: picks the "
                   "model's own prefix (e5: 'passage: ' / 'query: ')")
    e.add_argument("--column", default=None, help="the input column of texts (default: data.columns.text of a run, "
                   "else a column named text, else the only column)")
    e.add_argument("--on-error", choices=["error-row", "skip-row", "fail"], default="error-row",
                   help="a row that cannot be embedded (empty text): an error row (NaN in .npy), left out, or stop")
    e.add_argument("--id-column", default=None, help="input column copied into each output row (default: row)")
    e.add_argument("--keep-columns", default=None, metavar="A,B", help="input columns to copy into each row")
    e.add_argument("--keep-input", action="store_true", help="copy every input column into each output row")
    e.add_argument("--chunk-rows", type=int, default=None, help="rows read, embedded and written at a time")
    e.add_argument("--batch-size", type=int, default=None, help="texts per forward pass (default 64)")
    e.add_argument("--max-length", type=int, default=None, help="tokens per text (default: the model's)")
    e.add_argument("--backend", choices=["auto", "torch", "onnx", "onnx-int8", "ray"], default="auto",
                   help="auto: the ONNX export when the encoder has one (luban export --format onnx), else torch; "
                   "ray: --input's chunks embedded on --workers Ray actors (each as auto), rows in input order")
    e.add_argument("--workers", type=int, default=2, help="--backend ray: embedding actors (default 2)")
    e.add_argument("--address", default="local", help="--backend ray: local (start Ray here, default) or a "
                   "running cluster (auto, ray://head:10001)")
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=_cmd_embed)
