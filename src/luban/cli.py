"""The `luban` command: one thin sub-command per verb. Heavy imports happen inside the verbs."""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_train(a):
    from luban.pipeline import train

    train(a.config, a.set, resume=a.resume)


def _cmd_config_render(a):
    from luban.config import load_config, render

    print(render(load_config(a.config, a.set)), end="")


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
    from luban.predictor import load

    m = load(a.run).evaluate(a.data)
    _print_metrics(m)
    if a.output:
        with open(a.output, "w", encoding="utf-8") as f:
            json.dump(m, f, ensure_ascii=False, indent=1)


def _cmd_predict(a):
    from luban.errors import LubanError
    from luban.predictor import load

    if not a.text and not a.input:
        raise LubanError("predict: give --text \"...\" (repeatable) or --input FILE")
    p = load(a.run)
    kw = {k: v for k, v in (("top_k", a.top_k), ("draw", a.draw)) if v is not None}
    rows = []
    if a.text:
        rows += p.predict(a.text, **kw)
    if a.input:
        rows += p.predict_file(a.input, **kw)
    out = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        for r in rows:
            out.write(json.dumps(r, ensure_ascii=False) + "\n")
    finally:
        if a.output:
            out.close()
            print(f"wrote {len(rows)} predictions to {a.output}", file=sys.stderr)


def _cmd_generate_images(a):
    from luban.predictor import load

    out = load(a.run).generate(n=a.n, label=a.label, seed=a.seed, out=a.out)
    print(json.dumps(out, ensure_ascii=False))


def _cmd_generate(a):
    from luban.predictor import load

    p = load(a.run)
    knobs = {"max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "top_k": a.top_k, "top_p": a.top_p,
             "repetition_penalty": a.repetition_penalty, "num_beams": a.num_beams,
             "length_penalty": a.length_penalty, "seed": a.seed, "stop": a.stop or None}
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
            print(prompt + r["text"] if p.task == "text_generation" else r["text"])
            print(f"[{r['tokens']} tokens, {r.get('tokens_per_second', 0):.0f} tokens/s, "
                  f"{r.get('finish_reason', 'done')}]", file=sys.stderr)


def _cmd_transcribe(a):
    from luban.predictor import load

    p = load(a.run)
    out = open(a.output, "w", encoding="utf-8") if a.output else sys.stdout
    try:
        for path in a.audio:
            files = p._impl.read_inputs(path)
            for f, r in zip(files, p.predict(files), strict=True):
                out.write(json.dumps({"file": str(f), **r}, ensure_ascii=False) + "\n")
                out.flush()
    finally:
        if a.output:
            out.close()


def _cmd_serve(a):
    from luban.serve.app import serve

    serve(a.run, a.host, a.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="luban", description="luban: one YAML from data to an evaluated, "
                                "reusable model. Run `luban VERB --help` for details.")
    p.add_argument("--version", action="version", version="luban 0.1.0")
    sub = p.add_subparsers(dest="verb", required=True, metavar="VERB")

    def with_set(sp):
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set trainer.epochs=3 (repeatable)")

    t = sub.add_parser("train", help="train and evaluate a model from a YAML config")
    t.add_argument("config")
    with_set(t)
    t.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    t.set_defaults(fn=_cmd_train)

    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    r = csub.add_parser("render", help="print the config with every default filled in")
    r.add_argument("config")
    with_set(r)
    r.set_defaults(fn=_cmd_config_render)

    d = sub.add_parser("datasets", help="built-in offline datasets")
    dsub = d.add_subparsers(dest="datasets_verb", required=True, metavar="ACTION")
    dsub.add_parser("list", help="list built-in datasets").set_defaults(fn=_cmd_datasets_list)

    e = sub.add_parser("evaluate", help="evaluate a trained run on a labelled file")
    e.add_argument("run")
    e.add_argument("--data", required=True, help="CSV/TSV/JSONL/Parquet with the training columns")
    e.add_argument("--output", help="also write the metrics as JSON here")
    e.set_defaults(fn=_cmd_evaluate)

    pr = sub.add_parser("predict", help="predict with a trained run")
    pr.add_argument("run")
    pr.add_argument("--text", action="append", default=[], help="a text to classify (repeatable)")
    pr.add_argument("--input", help="a file of inputs (same columns as training)")
    pr.add_argument("--output", help="write JSON lines here instead of stdout")
    pr.add_argument("--top-k", type=int, default=None, help="classification: keep the k most likely labels")
    pr.add_argument("--draw", default=None, metavar="DIR", help="object detection: write images with boxes here")

    g = sub.add_parser("generate-images", help="sample images from a trained image-generation run")
    g.add_argument("run")
    g.add_argument("--n", type=int, default=64, help="how many images")
    g.add_argument("--out", default="grid.png", help="PNG file for the grid")
    g.add_argument("--label", default=None, help="class to generate (class-conditional models)")
    g.add_argument("--seed", type=int, default=0)
    g.set_defaults(fn=_cmd_generate_images)
    pr.set_defaults(fn=_cmd_predict)
    gt = sub.add_parser("generate", help="generate text with a text-generation (or translation/summarization) run")
    gt.add_argument("run")
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
    gt.set_defaults(fn=_cmd_generate)
    tr = sub.add_parser("transcribe", help="speech runs: transcribe (or classify) audio files or folders")
    tr.add_argument("run")
    tr.add_argument("audio", nargs="+", help="audio files, folders of them, or a manifest CSV/JSONL")
    tr.add_argument("--output", help="write JSON lines here instead of stdout")
    tr.set_defaults(fn=_cmd_transcribe)
    s = sub.add_parser("serve", help="serve a trained run: REST API + web playground")
    s.add_argument("run")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.set_defaults(fn=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from luban.errors import LubanError

    try:
        args.fn(args)
    except LubanError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; resume with `luban train CONFIG --resume`", file=sys.stderr)
        return 130
    return 0
