"""The `luban` command: one thin sub-command per verb. Heavy imports happen inside the verbs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 0, 1, 2, 130, 141


def _cmd_train(a):
    from luban.pipeline import train

    train(a.config, a.set, resume=a.resume, restart=a.restart)


def _cmd_config_render(a):
    from luban.config import load_config, render

    print(render(load_config(a.config, a.set)), end="")


def _cmd_config_schema(a):
    import json

    from luban.config import TASK_CONFIGS, json_schema
    from luban.errors import ConfigError

    if a.task not in TASK_CONFIGS:
        raise ConfigError(f"--task: unknown task {a.task!r}; choose one of {', '.join(TASK_CONFIGS)}")
    print(json.dumps(json_schema(a.task), indent=2, ensure_ascii=False))


def _cmd_datasets_list(a):
    from luban.data.builtin import BUILTINS

    width = max(len(n) for n in BUILTINS)
    for b in BUILTINS.values():
        print(f"{b.name:<{width}}  {b.task:<22}  {b.description}")


def _print_metrics(m: dict):
    scalars = {k: v for k, v in m.items() if isinstance(v, (int, float))}
    for k, v in scalars.items():
        print(f"{k:>20}: {v:.4f}")
    if "per_class" in m:
        print("per class:")
        for c, v in m["per_class"].items():
            if "precision" not in v:  # e.g. object detection: AP per class
                print(f"  {c}: " + "  ".join(f"{k} {x:.4f}" if isinstance(x, float) else f"{k} {x}"
                                             for k, x in v.items()))
                continue
            print(f"  {c}: precision {v['precision']:.4f}  recall {v['recall']:.4f}  f1 {v['f1']:.4f}  "
                  f"support {v['support']}")


def _cmd_evaluate(a):
    from luban.errors import ConfigError
    from luban.predictor import load

    p = load(a.run)
    if a.set:  # how to read the file (data.encoding, data.delimiter, ...): the run's data settings, overridden
        for item in a.set:
            if not item.split("=", 1)[0].strip().startswith("data."):
                raise ConfigError(f"--set {item!r}: luban evaluate takes data.* settings (how the file is read, "
                                  "e.g. data.encoding=gbk)")
        p.override_data(a.set, f"{a.run} with --set")
    m = p.evaluate(a.data)
    _print_metrics(m)
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            json.dump(m, f, ensure_ascii=False, indent=1)


def _cmd_predict(a):
    from luban.errors import LubanError
    from luban.lifecycle.predict_file import output_format

    if not a.text and not a.input:
        raise LubanError("predict: give --text \"...\" (repeatable) or --input FILE")
    if a.output:
        output_format(a.output)  # an unknown extension is refused before the model loads
    if a.text and a.input:
        raise LubanError("predict: give --text or --input, not both")
    keep = [c.strip() for c in a.keep_columns.split(",") if c.strip()] if a.keep_columns else None
    if a.backend == "ray":
        from luban.lifecycle.batch_predict import ray_predict

        if not a.input or not a.output:
            raise LubanError("predict --backend ray: give --input FILE and --output FILE")
        s = ray_predict(a.run, a.input, a.output, workers=a.workers, on_error=a.on_error, id_column=a.id_column,
                        keep_columns=keep, keep_input=a.keep_input, **({"top_k": a.top_k} if a.top_k else {}))
        print(s.message(a.output), file=sys.stderr)
        return
    from luban.predictor import load

    p = load(a.run, backend=a.backend)
    kw = {k: v for k, v in (("top_k", a.top_k), ("draw", a.draw)) if v is not None}
    if a.text:
        from luban.lifecycle.predict_file import write_predictions

        rows = p.predict(a.text, on_error="fail" if a.on_error == "fail" else "error-row", **kw)
        if a.on_error == "skip-row":
            rows = [r for r in rows if "error" not in r]
        write_predictions([rows], a.output)
        if a.output:
            print(f"wrote {len(rows)} predictions to {a.output}", file=sys.stderr)
        return
    s = p.write_predictions(a.input, a.output, on_error=a.on_error, id_column=a.id_column, keep_columns=keep,
                            keep_input=a.keep_input, chunk_rows=a.chunk_rows, **kw)
    if a.output or s.errors or s.skipped:
        print(s.message(a.output), file=sys.stderr)


def _cmd_generate_images(a):
    from luban.predictor import load

    out = load(a.run).generate(n=a.n, label=a.label, seed=a.seed, out=a.out)
    print(json.dumps(out, ensure_ascii=False))


def _cmd_generate(a):
    from luban.capabilities import GeneratesText
    from luban.hub.model_run import runs_for
    from luban.predictor import load

    schema = _generate_schema(a)  # before the model loads: a bad schema file fails at once
    p = load(runs_for([a.run])[0])
    continues = isinstance(p, GeneratesText) and p.continues_prompt
    knobs = {"max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
             "repetition_penalty": a.repetition_penalty, "num_beams": a.num_beams,
             "length_penalty": a.length_penalty, "seed": a.seed, "stop": a.stop or None, "json_schema": schema}
    if schema is not None:
        continues = False  # the JSON alone, not the prompt before it
    if a.greedy:
        knobs["do_sample"] = False
    knobs = {k: v for k, v in knobs.items() if v is not None}
    for prompt in a.prompt:
        if a.stream:
            for piece in p.stream_text(prompt, **knobs):
                print(piece, end="", flush=True)
            print(flush=True)
        elif a.json:
            print(json.dumps({"prompt": prompt, **p.generate_text(prompt, **knobs)}, ensure_ascii=False))
        else:
            r = p.generate_text(prompt, **knobs)
            print(prompt + r["text"] if continues else r["text"])
            print(f"[{r['tokens']} tokens, {r.get('tokens_per_second', 0):.0f} tokens/s, "
                  f"{r.get('finish_reason', 'done')}]", file=sys.stderr)


def _generate_schema(a) -> dict | None:
    """--json-object / --json-schema FILE: the JSON schema generation is constrained to (None: free text)."""
    from pathlib import Path

    from luban.errors import ConfigError
    from luban.generation.constrained import ANY_OBJECT, compile_schema

    if a.json_object and a.json_schema:
        raise ConfigError("--json-object and --json-schema: give one (a schema's reply is already JSON)")
    if a.json_object:
        return dict(ANY_OBJECT)
    if not a.json_schema:
        return None
    path = Path(a.json_schema)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"--json-schema {path}: cannot read it ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--json-schema {path}: not JSON ({e})") from None
    try:
        compile_schema(schema)
    except ValueError as e:
        raise ConfigError(f"--json-schema {path}: not a usable JSON schema: {e}") from None
    return schema


def _cmd_transcribe(a):
    from luban.predictor import load

    p = load(a.run)
    out = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        for path in a.audio:
            files = p.read_inputs(path)
            for f, r in zip(files, p.predict(files), strict=True):
                out.write(json.dumps({"file": str(f), **r}, ensure_ascii=False) + "\n")
                out.flush()
    finally:
        if a.output:
            out.close()


def _cmd_tune(a):
    from luban.lifecycle.tune import tune

    tune(a.config, a.trials, jobs=a.jobs, timeout=a.timeout, resume=a.resume, storage=a.storage,
         backend=a.backend, overrides=a.set)


def _cmd_cv(a):
    from luban.lifecycle.cv import cross_validate

    cross_validate(a.config, a.folds, stratified=a.stratified, overrides=a.set)


def _cmd_ensemble(a):
    from luban.lifecycle.ensemble import create_ensemble

    out = create_ensemble(a.runs, a.out, weighting=a.weighting, evaluate_on=a.data, overwrite=a.overwrite)
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    if "test" in m:
        _print_metrics({k: v for k, v in m["test"].items() if k != "per_class"})
    print(f"ensemble of {len(a.runs)} runs: {out}")


def _cmd_recommend(a):
    from luban.errors import LubanError
    from luban.predictor import load

    if not a.user and not a.all_users:
        raise LubanError("recommend: give --user ID (repeatable) or --all-users")
    p = load(a.run)
    if a.all_users and a.output:
        n = p.recommend_all(a.output, k=a.k, exclude_seen=a.exclude_seen)
        print(f"wrote recommendations for {n} users to {a.output}", file=sys.stderr)
        return
    if a.all_users:
        for r in p.recommend_all(k=a.k, exclude_seen=a.exclude_seen):
            print(json.dumps(r, ensure_ascii=False))
        return
    try:
        features = json.loads(a.features) if a.features else None
    except json.JSONDecodeError as e:
        raise LubanError(f"--features: not valid JSON ({e.msg})") from None
    if features is not None and not isinstance(features, dict):
        raise LubanError("--features: expected a JSON object of column: value")
    out = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        for user in a.user:
            r = p.recommend(user, k=a.k, history=a.history, exclude_seen=a.exclude_seen, features=features)
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if a.output:
            out.close()


def _cmd_similar_items(a):
    from luban.predictor import load

    p = load(a.run)
    for item in a.item:
        print(json.dumps(p.similar_items(item, k=a.k), ensure_ascii=False))


def _cmd_export(a):
    from luban.compress.export import export_run
    from luban.predictor import _run_task

    if _run_task(a.run) == "text_embedding":  # fp32 + int8 ONNX of the encoder, checked by cosine
        from luban.embedding.export import export_encoder_onnx
        from luban.errors import LubanError

        if a.format != "onnx":
            raise LubanError("a text_embedding run exports as --format onnx (its model/encoder/ is already a "
                             "Hugging Face folder)")
        export_encoder_onnx(a.run)
        return
    export_run(a.run, a.format, opset=a.opset, dynamic_axes=a.dynamic_axes, samples=a.samples)


def _cmd_compress(a):
    from luban.errors import LubanError

    chosen = [x for x in (a.quantize, a.prune, a.distill_from) if x is not None]
    if len(chosen) != 1:
        raise LubanError("compress: give exactly one of --quantize METHOD, --prune AMOUNT, --distill-from TEACHER_RUN")
    if a.quantize:
        from luban.compress.llm import lm_source, quantize_lm

        if lm_source(a.run, a.quantize):  # a causal LM: weight-only int8 / int4 / bf16 (luban.compress.llm)
            quantize_lm(a.run, a.quantize, out=a.out, name=a.name, group_size=a.group_size, overwrite=a.overwrite)
            return
        if a.out is not None:
            raise LubanError("compress: --out applies to a Hugging Face causal-LM folder; a run's compressed copy "
                             "is a run beside it (--name)")
        from luban.compress.quantize import quantize_run

        quantize_run(a.run, a.quantize, name=a.name, exclude_nodes=a.exclude_nodes,
                     exclude_op_types=a.exclude_op_types, calibration_size=a.calibration_size,
                     calibration_method=a.calibration_method, per_channel=a.per_channel, overwrite=a.overwrite)
    elif a.prune is not None:
        from luban.compress.prune import prune_run

        prune_run(a.run, a.prune, structured=a.structured, finetune_epochs=a.finetune_epochs, lr=a.finetune_lr,
                  name=a.name, overwrite=a.overwrite)
    else:
        from luban.compress.distill import distill_run

        distill_run(a.run, a.distill_from, temperature=a.temperature, alpha=a.alpha, name=a.name, overrides=a.set,
                    overwrite=a.overwrite, transfer_data=a.transfer_data)


def _cmd_benchmark(a):
    from luban.compress.bench import benchmark

    benchmark(a.runs, a.data, batch_size=a.batch_size, latency_rows=a.latency_rows)


def _cmd_serve(a):
    from luban.serve.app import serve
    from luban.serve.settings import KEYS_ENV, ServeSettings, env_api_keys, read_api_keys

    if a.api_key:
        print(f"warning: --api-key is visible to every user of this machine (`ps`); put the keys in ${KEYS_ENV} "
              "or --api-keys-file instead", file=sys.stderr)
    keys = env_api_keys() + list(a.api_key) + (read_api_keys(a.api_keys_file) if a.api_keys_file else [])
    settings = ServeSettings(
        backend=a.backend, device=a.device, threads=a.threads, replicas=a.replicas,
        max_batch_size=a.max_batch_size, max_wait_ms=a.max_wait_ms,
        max_queue=a.max_queue, max_active_generations=a.max_active_generations,
        batch_generations=a.batch_generations,
        max_body_bytes=int(a.max_body_mb * 2**20), max_inputs=a.max_inputs, max_text_chars=a.max_text_chars,
        max_image_pixels=a.max_image_pixels, max_audio_seconds=a.max_audio_seconds, max_tokens=a.max_tokens,
        request_timeout=a.request_timeout, api_keys=keys, cors_origins=list(a.cors_origin),
        allowed_hosts=list(a.allowed_host), body_timeout=a.body_timeout, max_json_depth=a.max_json_depth,
        max_connections=a.max_connections, kb=a.kb, kb_k=a.kb_k, kb_mode=a.kb_mode,
        kb_min_score=a.kb_min_score, redact=_redact_types(a.redact),
        redact_ner=a.redact_ner).check()  # a bad limit is an error before anything loads
    from luban.hub.model_run import runs_for

    runs = runs_for(a.run)  # a model folder or starter name: served as it is (luban.hub.model_run)
    serve(runs, a.host, a.port, settings=settings, workers=a.workers, graceful_timeout=a.graceful_timeout)


def _redact_types(value: str | None) -> list[str]:
    """`luban serve --redact [TYPES]`: the PII types (luban.data.redact), checked before anything loads."""
    if value is None:
        return []
    from luban.data.redact import check_types

    return check_types([t.strip() for t in value.split(",") if t.strip()], "--redact")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="luban", description="luban: one YAML from data to an evaluated, "
                                "reusable model. Run `luban VERB --help` for details.")
    from luban.version import __version__

    p.add_argument("--version", action="version", version=f"luban {__version__}")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error (also: LUBAN_DEBUG=1)")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_set(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.epochs=3 (repeatable)")

    t = sub.add_parser("train", help="train and evaluate a model from a YAML config")
    t.add_argument("config")
    with_set(t)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    t.add_argument("--restart", action="store_true",
                   help="discard an interrupted run of the same name (its checkpoints) and start over")
    t.set_defaults(fn=_cmd_train)

    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    r = csub.add_parser("render", help="print the settings the run uses, every default filled in")
    r.add_argument("config")
    with_set(r)
    r.set_defaults(fn=_cmd_config_render)
    cs = csub.add_parser("schema", help="print one task's config as JSON Schema (for editors)")
    cs.add_argument("--task", required=True, help="e.g. text_classification (see docs/config.md)")
    cs.set_defaults(fn=_cmd_config_schema)

    d = sub.add_parser("datasets", help="built-in offline datasets")
    dsub = d.add_subparsers(dest="datasets_verb", required=True, metavar="ACTION")
    dsub.add_parser("list", help="list built-in datasets").set_defaults(fn=_cmd_datasets_list)

    e = sub.add_parser("evaluate", help="evaluate a trained run on a labelled file")
    e.add_argument("run")
    e.add_argument("--data", required=True, help="CSV/TSV/JSONL/Parquet with the training columns")
    e.add_argument("--output", help="also write the metrics as JSON here")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="read the file with other data settings than the run's, e.g. --set data.encoding=gbk "
                        "(data.* keys; repeatable)")
    e.set_defaults(fn=_cmd_evaluate)

    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("run")
    pr.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    pr.add_argument("--input", help="a file of inputs (same columns as training; .txt: one text per line)")
    pr.add_argument("--output", help="write here instead of stdout (JSON lines); the extension picks the format: "
                    ".jsonl, .csv, .tsv or .parquet")
    pr.add_argument("--on-error", choices=["error-row", "skip-row", "fail"], default="error-row",
                    help="a row the model cannot take (empty text, missing image): an output row saying why "
                    "(default), left out and counted, or stop with file:line")
    pr.add_argument("--id-column", default=None, help="input column to join outputs on (default: data.columns.id, "
                    "else the 0-based row number as \"row\")")
    pr.add_argument("--keep-columns", default=None, metavar="A,B", help="input columns to copy into each output row")
    pr.add_argument("--keep-input", action="store_true", help="copy every input column into each output row")
    pr.add_argument("--chunk-rows", type=int, default=None, help="rows read, predicted and written at a time")
    pr.add_argument("--top-k", type=int, default=None, help="classification: keep the k most likely labels")
    pr.add_argument("--draw", default=None, metavar="DIR", help="object detection: write images with boxes here")
    pr.add_argument("--backend", choices=["auto", "torch", "onnx", "ray"], default="auto",
                    help="auto: the ONNX export when the run has one; onnx: insist on it (torch-free for "
                         "text/tabular/image classification); ray: shard --input over Ray Data workers")
    pr.add_argument("--workers", type=int, default=2, help="--backend ray: prediction workers")

    g = sub.add_parser("generate-images", help="sample images from a trained image-generation run")
    g.add_argument("run")
    g.add_argument("--n", type=int, default=64, help="how many images")
    g.add_argument("--out", default="grid.png", help="PNG file for the grid")
    g.add_argument("--label", default=None, help="class to generate (class-conditional models)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=_cmd_generate_images)
    pr.set_defaults(fn=_cmd_predict)
    gt = sub.add_parser("generate", help="generate text with a text-generation (or translation/summarization) run")
    gt.add_argument("run", help="a run directory, or a causal-LM model folder / starter name (used as it is)")
    gt.add_argument("--prompt", action="append", required=True, help="the prompt (repeatable)")
    gt.add_argument("--max-new-tokens", type=int)
    gt.add_argument("--temperature", type=float, help="0: greedy")
    gt.add_argument("--top-k", type=int)
    gt.add_argument("--top-p", type=float)
    gt.add_argument("--repetition-penalty", type=float)
    gt.add_argument("--num-beams", type=int, help="beam search width")
    gt.add_argument("--length-penalty", type=float, help="beam search: score / length**this")
    gt.add_argument("--stop", action="append", help="stop string (repeatable)")
    gt.add_argument("--seed", type=int, help="seed the sampler (same seed, same text)")
    gt.add_argument("--greedy", action="store_true", help="greedy decoding whatever the temperature")
    gt.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gt.add_argument("--json", action="store_true", help="one JSON object per prompt (text, tokens, timing)")
    gt.add_argument("--json-object", action="store_true",
                    help="constrain the reply to a JSON object (constrained decoding; causal LMs)")
    gt.add_argument("--json-schema", metavar="FILE",
                    help="constrain the reply to JSON following the JSON schema in FILE (constrained decoding)")
    gt.set_defaults(fn=_cmd_generate)
    tr = sub.add_parser("transcribe", help="speech runs: transcribe (or classify) audio files or folders")
    tr.add_argument("run")
    tr.add_argument("audio", nargs="+", help="audio files, folders of them, or a manifest CSV/JSONL")
    tr.add_argument("--output", help="write JSON lines here instead of stdout")
    tr.set_defaults(fn=_cmd_transcribe)
    tu = sub.add_parser("tune", help="hyperparameter search over the config's search: space (Optuna)")
    tu.add_argument("config")
    tu.add_argument("--trials", type=int, default=20, help="total trials (a resumed study counts finished ones)")
    tu.add_argument("--jobs", type=int, default=1, help="trials at a time")
    tu.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    tu.add_argument("--resume", action="store_true", help="continue the study stored for this config")
    tu.add_argument("--storage", default=None, help="Optuna storage URL (default: sqlite in runs/NAME-tune/)")
    tu.add_argument("--backend", choices=["local", "ray"], default="local", help="ray: trials as Ray Tune trials")
    with_set(tu)
    tu.set_defaults(fn=_cmd_tune)
    cv = sub.add_parser("cv", help="k-fold cross-validation of a config")
    cv.add_argument("config")
    cv.add_argument("--folds", type=int, default=5)
    cv.add_argument("--stratified", action="store_true", help="keep label proportions in every fold")
    with_set(cv)
    cv.set_defaults(fn=_cmd_cv)
    en = sub.add_parser("ensemble", help="combine finished runs of one task into an ensemble run")
    en.add_argument("runs", nargs="+")
    en.add_argument("--out", required=True, help="the ensemble's run directory")
    en.add_argument("--weighting", choices=["mean", "validation"], default="mean",
                    help="mean: equal weights; validation: weighted by each run's validation score")
    en.add_argument("--data", default=None, help="labelled file to evaluate on (default: the members' test file)")
    en.add_argument("--overwrite", action="store_true")
    en.set_defaults(fn=_cmd_ensemble)
    rc = sub.add_parser("recommend", help="recommendation: top-k items for users of a trained run")
    rc.add_argument("run")
    rc.add_argument("--user", action="append", default=[], help="user id (repeatable); unknown users get the "
                    "fallback: --history, then features, then popularity")
    rc.add_argument("--k", type=int, default=None, help="how many items (default: the run's recommendation.k)")
    rc.add_argument("--exclude-seen", action=argparse.BooleanOptionalAction, default=None,
                    help="leave out items the user already has (default: the run's recommendation.exclude_seen)")
    rc.add_argument("--history", default=None, metavar="ITEM,ITEM,...",
                    help="items the user just interacted with, oldest first")
    rc.add_argument("--features", default=None, metavar="JSON",
                    help='a new user\'s features for the two-tower model, e.g. \'{"age": 30, "gender": "F"}\'')
    rc.add_argument("--all-users", action="store_true", help="every user of the run (batch, JSON lines)")
    rc.add_argument("--output", default=None, help="write JSON lines here instead of stdout")
    rc.set_defaults(fn=_cmd_recommend)
    si = sub.add_parser("similar-items", help="recommendation: the items most similar to an item")
    si.add_argument("run")
    si.add_argument("item", nargs="+", help="item id(s)")
    si.add_argument("--k", type=int, default=None)
    si.set_defaults(fn=_cmd_similar_items)
    ex = sub.add_parser("export", help="export a run's model to ONNX, TorchScript or Hugging Face layout, or a "
                        "recommender's vectors (with a parity check)")
    ex.add_argument("run")
    ex.add_argument("--format", choices=["onnx", "torchscript", "hf", "embeddings"], default="onnx")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    ex.add_argument("--dynamic-axes", action=argparse.BooleanOptionalAction, default=True,
                    help="dynamic batch (and sequence) axes; luban's ONNX predictor needs them (default: on)")
    ex.add_argument("--samples", type=int, default=128, help="validation rows for the parity check")
    ex.set_defaults(fn=_cmd_export)
    cp = sub.add_parser("compress", help="quantize, prune or distill a run into a new run (metrics re-measured)")
    cp.add_argument("run", help="the run to compress; with --distill-from: the student (a run or a YAML config)")
    cp.add_argument("--quantize", choices=["int8-dynamic", "int8-static", "bf16", "int8-weight", "int4-weight"],
                    help="int8-dynamic / int8-static: ONNX (classifiers, tabular, images); int8-weight / int4-weight: "
                         "causal LMs, weight-only (a text_generation run of a pretrained_lm, or an HF folder); bf16: "
                         "either")
    cp.add_argument("--out", metavar="DIR", help="causal-LM HF folder: where the quantized run goes (default: "
                    "FOLDER-METHOD beside it)")
    cp.add_argument("--group-size", type=int, default=32,
                    help="int4-weight: input columns per scale and zero (default 32)")
    cp.add_argument("--prune", type=float, metavar="AMOUNT", help="fraction of Linear/Conv weights to zero")
    cp.add_argument("--distill-from", metavar="TEACHER_RUN", help="train the student on this run's soft targets")
    cp.add_argument("--name", help="the new run's name (default: RUN-METHOD, STUDENT-distilled)")
    cp.add_argument("--overwrite", action="store_true", help="replace an existing run of that name")
    cp.add_argument("--exclude-nodes", nargs="+", default=[], metavar="NODE",
                    help="int8: ONNX node names or glob patterns to keep in float (e.g. '/head/*')")
    cp.add_argument("--exclude-op-types", nargs="+", default=[], metavar="OP", help="int8: op types kept in float")
    cp.add_argument("--per-channel", action=argparse.BooleanOptionalAction, default=True,
                    help="int8: per-channel weight scales (default: on)")
    cp.add_argument("--calibration-size", type=int, default=256, help="int8-static: training rows to calibrate on")
    cp.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], default="minmax")
    cp.add_argument("--structured", action="store_true", help="prune whole output rows / filters (L2 norm)")
    cp.add_argument("--finetune-epochs", type=int, default=1, help="prune: fine-tune epochs after pruning (0: none)")
    cp.add_argument("--finetune-lr", type=float, default=None, help="prune: fine-tune lr (default: the run's lr)")
    cp.add_argument("--temperature", type=float, default=2.0, help="distill: softmax temperature")
    cp.add_argument("--alpha", type=float, default=0.5, help="distill: weight of the soft-target loss")
    cp.add_argument("--transfer-data", metavar="FILE", help="distill (text): unlabeled texts the teacher scores, "
                    "added to the student's training rows (soft targets only)")
    with_set(cp)
    cp.set_defaults(fn=_cmd_compress)
    bm = sub.add_parser("benchmark", help="size, latency, throughput and accuracy of runs on a labelled file")
    bm.add_argument("runs", nargs="+")
    bm.add_argument("--data", required=True, help="labelled file with the training columns")
    bm.add_argument("--batch-size", type=int, default=32, help="batch size for the throughput column")
    bm.add_argument("--latency-rows", type=int, default=200, help="inputs timed one at a time")
    bm.set_defaults(fn=_cmd_benchmark)
    s = sub.add_parser("serve", help="serve trained runs: REST + OpenAI-compatible API, web playground")
    s.add_argument("run", nargs="+", help="run directories (each served as a model named after its folder); a "
                   "causal-LM model folder or starter name is served as it is; an encoder folder or starter name "
                   "(starter-e5-small) serves /v1/embeddings")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="server processes (each loads every model)")
    s.add_argument("--api-key", action="append", default=[], metavar="KEY",
                   help="require `Authorization: Bearer KEY` on the API (repeatable; visible in `ps`: prefer "
                        "$LUBAN_API_KEYS, comma-separated, or --api-keys-file)")
    s.add_argument("--api-keys-file", metavar="FILE", help="API keys, one per line")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls (and form posts) from this origin (repeatable; default: CORS off, "
                        "cross-origin POSTs refused)")
    s.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name clients may reach the server by (Host header) besides localhost and --host "
                        "(repeatable; *.example.com for subdomains). Bound to 0.0.0.0 any Host is accepted unless "
                        "this is given")
    s.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: the ONNX export when a run has one; onnx: insist on it (torch-free for "
                        "text/tabular/image classification: see `luban predict`)")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per forward pass (default: the run's trainer.num_threads)")
    s.add_argument("--replicas", type=int, default=1,
                   help="copies of each model taking predict batches in parallel (e.g. one per core, --threads 1)")
    s.add_argument("--max-batch-size", type=int, default=32, help="inputs per forward pass (micro-batching)")
    s.add_argument("--max-wait-ms", type=float, default=5.0, help="how long a request waits for a batch to fill")
    s.add_argument("--max-queue", type=int, default=1024, help="inputs waiting per model before 503 + Retry-After")
    s.add_argument("--max-active-generations", type=int, default=8, help="sequences decoded at once")
    s.add_argument("--no-batch-generations", dest="batch_generations", action="store_false",
                   help="give every generation its own forward pass (default: requests arriving together are "
                        "decoded in one batch)")
    s.add_argument("--max-inputs", type=int, default=256, help="inputs per predict request")
    s.add_argument("--max-body-mb", type=float, default=16.0, help="request body limit")
    s.add_argument("--max-text-chars", type=int, default=20000, help="characters per text, prompt or conversation")
    s.add_argument("--max-image-pixels", type=int, default=40_000_000)
    s.add_argument("--max-audio-seconds", type=float, default=120.0)
    s.add_argument("--max-tokens", type=int, default=2048, help="max_tokens limit of a completion")
    s.add_argument("--request-timeout", type=float, default=60.0, help="seconds before a request gets 504")
    s.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds for a request's headers, then its body, to arrive; slower uploads get 408, and "
                        "slow clients are disconnected")
    s.add_argument("--max-json-depth", type=int, default=64, help="nesting of a JSON body (deeper: 400)")
    s.add_argument("--max-connections", type=int, default=1024,
                   help="connections and requests at once; more get 503")
    s.add_argument("--graceful-timeout", type=float, default=30.0,
                   help="on SIGTERM/Ctrl-C: seconds to finish in-flight requests")
    s.add_argument("--kb", metavar="KB", help="answer chat completions from this knowledge base (`luban kb build`), "
                   "with citations")
    s.add_argument("--kb-k", type=int, default=4, help="--kb: chunks retrieved per question")
    s.add_argument("--kb-mode", choices=["dense", "lexical", "hybrid"], default="hybrid")
    s.add_argument("--kb-min-score", type=float, default=None,
                   help="--kb: below this best cosine the answer is that the documents do not say (default: the KB's)")
    s.add_argument("--redact", nargs="?", const="phone,email,id_card,bank_card,ip,url", metavar="TYPES",
                   help="replace PII in JSON requests and responses (default types: phone,email,id_card,bank_card,"
                        "ip,url; person,address need --redact-ner); see docs/trust.md")
    s.add_argument("--redact-ner", metavar="RUN", help="a token_classification run for --redact person,address")
    s.set_defaults(fn=_cmd_serve)
    from luban.hub.cli import add_parser as add_models_parser

    add_models_parser(sub)
    from luban.embedding.cli import add_parser as add_embed_parser

    add_embed_parser(sub)
    from luban.kb.cli import add_parser as add_kb_parser

    add_kb_parser(sub)
    from luban.trust_cli import add_parsers as add_trust_parsers

    add_trust_parsers(sub)  # redact, explain
    return p


# --------------------------------------------------------------------------------------------- main

# checks that run before a verb imports torch & co (luban.preflight): config, data files, columns
PREFLIGHT = {
    "train": lambda a: _preflight().check_train(a.config, a.set),
    "tune": lambda a: _preflight().check_train(a.config, a.set),
    "cv": lambda a: _preflight().check_train(a.config, a.set),
    "evaluate": lambda a: _preflight().check_evaluate(a.run, a.data, getattr(a, "set", None)),
    "predict": lambda a: _preflight().check_runs([a.run], {"--input": a.input} if a.input else None),
    "transcribe": lambda a: _preflight().check_runs([a.run]),
    "generate": lambda a: _preflight().check_runs_or_models([a.run]),
    "generate-images": lambda a: _preflight().check_runs([a.run]),
    "recommend": lambda a: _preflight().check_runs([a.run]),
    "similar-items": lambda a: _preflight().check_runs([a.run]),
    "export": lambda a: _preflight().check_runs([a.run]),
    "benchmark": lambda a: _preflight().check_runs(a.runs, {"--data": a.data}),
    "ensemble": lambda a: _preflight().check_runs(a.runs),
    "serve": lambda a: _kb_preflight(a.kb),
    "explain": lambda a: _preflight().check_runs([a.run], {"--input": a.input} if a.input else None),
}


def _kb_preflight(kb):
    if kb:  # a missing or damaged knowledge base fails before the models load
        from luban.kb.base import read_meta

        read_meta(kb)


def _preflight():
    import luban.preflight as preflight

    return preflight


def _train_hint(a) -> str:
    try:
        from luban.config import load_config
        from luban.rundir import RunDir

        cfg = load_config(a.config, a.set)
        if (RunDir(cfg.output.dir, cfg.output.name).work / "checkpoints" / "last").is_dir():
            return (f"continue from the last checkpoint with `luban train {a.config} --resume` (or start over with "
                    "--restart)")
    except Exception:  # noqa: BLE001 - a hint must never hide the interruption
        pass
    return "no checkpoint was written; nothing to resume"


def _output_hint(a) -> str:
    out = getattr(a, "output", None)
    return f"{out} may be incomplete; run the command again" if out else "run the command again"


# what Ctrl-C leaves behind, per verb: the line printed after "interrupted; "
INTERRUPT_HINTS = {
    "train": _train_hint,
    "tune": lambda a: f"finished trials are kept: continue the study with `luban tune {a.config} --resume`",
    "cv": lambda a: f"the folds are not resumable: run `luban cv {a.config}` again",
    "evaluate": lambda a: "no metrics were written" if not a.output else f"{a.output} was not written",
    "predict": _output_hint,
    "embed": _output_hint,
    "transcribe": _output_hint,
    "recommend": _output_hint,
    "serve": lambda a: "the server stopped",
    "export": lambda a: f"the export did not finish: run `luban export {a.run}` again",
    "compress": lambda a: "the compressed run was not finished: run the command again",
    "ensemble": lambda a: "the ensemble run was not finished: run the command again",
    "benchmark": lambda a: "the benchmark did not finish",
    "kb": lambda a: "the knowledge base was left as it was (writes are atomic)",
}


def _interrupt_message(args) -> str:
    hint = INTERRUPT_HINTS.get(args.verb)
    return "interrupted" + (f"; {hint(args)}" if hint else "")


def _debug(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("LUBAN_DEBUG", "").lower() not in ("", "0", "false", "no")


def main(argv: list[str] | None = None) -> int:
    """Run one verb. Exit codes: 0 done, 2 a user error (bad config, data, arguments: `error: ...`), 130
    interrupted (Ctrl-C), 1 an internal error (a bug: one line, the traceback with --debug or LUBAN_DEBUG=1),
    141 the output pipe closed early (e.g. `| head`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    args = build_parser().parse_args([x for x in argv if x != "--debug"])
    from luban.errors import LubanError

    try:
        check = PREFLIGHT.get(args.verb)
        if check is not None:
            check(args)  # errors in a second: before the verb imports torch
        args.fn(args)
    except LubanError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional dependency: name the extra that brings it (luban.extras)
        from luban.extras import missing_extra_message

        message = missing_extra_message(e)
        if message is not None:
            print(f"error: luban {args.verb} {message}", file=sys.stderr)
            return 2
        return _internal_error(e, debug)
    except KeyboardInterrupt:
        print(_interrupt_message(args), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`luban predict ... | head`): stop quietly
        try:  # and keep Python's final flush of stdout from failing again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return EXIT_BROKEN_PIPE
    except Exception as e:  # noqa: BLE001 - anything else is a bug in luban, not the user's mistake
        return _internal_error(e, debug)
    return EXIT_OK


def _internal_error(e: BaseException, debug: bool) -> int:
    """One line for a bug in luban (the traceback with --debug / LUBAN_DEBUG=1); exit code 1."""
    if debug:
        traceback.print_exception(e)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    print(f"error: internal error ({type(e).__name__}{': ' + first if first else ''}); this is a bug in "
          "luban: please report it with the command"
          + ("" if debug else " and the traceback from `luban --debug ...` (or LUBAN_DEBUG=1)"),
          file=sys.stderr)
    return EXIT_INTERNAL
