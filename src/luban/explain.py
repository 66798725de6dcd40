"""Per-prediction explanations (`luban explain`, POST /v1/explain, the report's wrong examples): how much each part
of one input pushed the model toward the class it explains (by default the predicted one).

- text: one score per token of the run's own tokenizer, with its character offsets in the (cleaned) text, and the
  same merged onto characters (a word's score shared by its characters), so Chinese reads character by character.
  The linear n-gram bag (ngram_bag with embedding_dim 0) is explained exactly: its logit is a sum over the text's
  n-grams of weight x class weight, so each n-gram's term is its contribution, spread over the characters it
  covers. Every other text model (TextCNN, RNN, Transformer, pretrained encoders) gets Integrated Gradients
  (Captum's LayerIntegratedGradients) on its token-embedding layer, attributing the explained class's probability
  against an all-padding baseline.
- tabular: Integrated Gradients on the scaled numeric features and on the category embeddings (Captum), one score
  per feature.
- image: Integrated Gradients on the pixels against a black (mean) baseline, summed over channels; `overlay_png`
  draws them over the image.

Scores are signed: positive pushed toward the class, negative away from it.
"""

from __future__ import annotations

import re

import numpy as np
import torch

IG_STEPS = 32


def _captum():
    try:
        import captum.attr as attr
    except ImportError:
        from luban.errors import LubanError

        raise LubanError("explanations need captum (not installed): pip install 'luban[trust]'") from None
    return attr


# ----------------------------------------------------------------------------------------------- text


def token_spans(encoder, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """The ids the model reads for `text` (as at prediction) and each one's (start, end) character offsets; special
    tokens get (0, 0)."""
    tok = getattr(encoder, "tok", None)
    if tok is not None and hasattr(tok, "__call__") and hasattr(tok, "convert_ids_to_tokens"):  # transformers
        enc = tok(text, truncation=True, max_length=encoder.max_length, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if tok is not None and hasattr(tok, "encode_batch"):  # HF tokenizers (luban subwords)
        e = tok.encode(text)
        n = encoder.max_length or len(e.ids)
        return (e.ids[:n] or [1]), [tuple(o) for o in e.offsets[:n]] or [(0, 0)]
    pieces = encoder._pieces(text)[: encoder.max_length]
    ids = encoder.encode([text])[0]
    src = text.lower() if encoder.cfg.lowercase and len(text.lower()) == len(text) else text
    spans, pos = [], 0
    for p in pieces:
        at = src.find(p, pos)
        if at < 0:
            spans.append((pos, pos))
            continue
        spans.append((at, at + len(p)))
        pos = at + len(p)
    return ids, spans or [(0, 0)]


def _embedding_layer(model):
    if hasattr(model, "embed"):
        return model.embed
    backbone = getattr(model, "backbone", None)
    if backbone is not None and hasattr(backbone, "get_input_embeddings"):
        return backbone.get_input_embeddings()
    from luban.errors import LubanError

    raise LubanError(f"cannot explain a {type(model).__name__}: no token-embedding layer found")


def _merge(text: str, tokens: list[dict]) -> list[float]:
    chars = [0.0] * len(text)
    for t in tokens:
        a, b = t["start"], t["end"]
        if b > a:
            for i in range(a, min(b, len(text))):
                chars[i] += t["score"] / (b - a)
    return chars


def explain_texts(p, texts: list[str], target: str | None = None, steps: int = IG_STEPS) -> list[dict]:
    """Explanations for a text classification predictor `p` (luban.tasks.text_classification): one dict per text
    with label, score, the explained class (`target`), method, tokens [{text, start, end, score}] and chars."""
    from luban.data.cleaning import normalize_inputs

    texts = normalize_inputs(texts, p.cfg.data.clean)
    labels = p.label_map.labels
    if target is not None and target not in labels:
        from luban.errors import DataError

        raise DataError(f"target: {target!r} is not a class of this run ({', '.join(labels[:20])})")
    preds = p.predict(texts)
    model = p.model
    model.eval()
    out = []
    for text, pred in zip(texts, preds):
        c = labels.index(target) if target is not None else labels.index(pred["label"])
        if hasattr(p.encoder, "encode_weighted") and getattr(model, "linear", False):
            tokens, method = _ngram_exact(p, text, c), "exact (linear n-gram bag: weight x class weight per n-gram)"
        else:
            tokens, method = _integrated_gradients(p, model, text, c, steps), \
                f"integrated gradients on the token embeddings ({steps} steps, padding baseline; Captum)"
        out.append({"text": text, "label": pred["label"], "score": pred["score"], "target": labels[c],
                    "target_probability": pred["probabilities"][labels[c]], "method": method,
                    "tokens": tokens, "chars": [round(v, 6) for v in _merge(text, tokens)]})
    return out


def _integrated_gradients(p, model, text: str, c: int, steps: int) -> list[dict]:
    attr = _captum()
    dev = next(model.parameters()).device
    weighted = hasattr(p.encoder, "encode_weighted")
    if weighted:  # a non-linear n-gram bag: its inputs are n-gram ids with weights
        ids_, w = p.encoder.encode_weighted([text])
        x = torch.as_tensor(ids_[0][None, :], device=dev)
        mask = torch.as_tensor(w[0][None, :], device=dev)
    else:
        ids, spans = token_spans(p.encoder, text)
        x = torch.as_tensor([ids], device=dev)
        mask = torch.ones_like(x)

    def forward(ids, mask):
        return torch.softmax(model(ids, mask).float(), -1)

    lig = attr.LayerIntegratedGradients(forward, _embedding_layer(model))
    base = torch.full_like(x, p.pad_id)
    with torch.enable_grad():
        a = lig.attribute(x, baselines=base, additional_forward_args=(mask,), target=c, n_steps=steps,
                          internal_batch_size=steps)
    scores = a.sum(-1)[0].detach().cpu().numpy()
    if weighted:
        return _spread_ngrams(p.encoder, text, x[0].tolist(), scores)
    return [{"text": text[s:e], "start": s, "end": e, "score": round(float(v), 6)}
            for (s, e), v in zip(spans, scores) if e > s]


def _ngram_exact(p, text: str, c: int) -> list[dict]:
    ids, w = p.encoder.encode_weighted([text])
    table = p.model.embed.weight[:, c].detach().cpu().numpy()
    contrib = w[0] * table[ids[0]]
    return _spread_ngrams(p.encoder, text, ids[0].tolist(), contrib)


def _spread_ngrams(enc, text: str, ids: list[int], contrib) -> list[dict]:
    """Each feature's contribution shared by the n-gram occurrences in the text that map to it (the featurizer's own
    n-grams, looked up with `feature_ids`), and each occurrence's share by the characters it covers: character
    tokens whose scores sum to the features' total."""
    per_id: dict[int, float] = {}
    for i, v in zip(ids, contrib):
        per_id[int(i)] = per_id.get(int(i), 0.0) + float(v)
    src = text.lower() if enc.lowercase and len(text.lower()) == len(text) else text
    units: list[tuple[str, list[int]]] = []  # (the unit as the featurizer sees it, the characters it covers)
    if enc.analyzer == "char":  # runs of white space are one " " (as the featurizer's char analyzer)
        for m in re.finditer(r"\s\s+|.", src, flags=re.S):
            units.append((" " if len(m.group()) > 1 else m.group(), list(range(m.start(), m.end()))))
    else:
        at = 0
        for tok in enc._tokens(src):
            k = src.find(tok, at)
            k = at if k < 0 else k
            units.append((tok, list(range(k, min(k + len(tok), len(text))))))
            at = k + len(tok)
    lo, hi = enc.ngram_range
    sep = "" if enc.analyzer == "char" else " "
    grams = [(sep.join(u for u, _ in units[a:a + n]), [c for _, cs in units[a:a + n] for c in cs])
             for n in range(lo, hi + 1) for a in range(len(units) - n + 1)]
    fids = enc.feature_ids([g for g, _ in grams]) if grams else []
    seen: dict[int, int] = {}
    for f in fids:
        if f is not None and f in per_id:
            seen[f] = seen.get(f, 0) + 1
    chars = np.zeros(len(text))
    for (_, cs), f in zip(grams, fids):
        if f is None or f not in per_id or not cs:
            continue
        chars[cs] += per_id[f] / (seen[f] * len(cs))
    return [{"text": ch, "start": k, "end": k + 1, "score": round(float(chars[k]), 6)}
            for k, ch in enumerate(text) if not ch.isspace()]


# ----------------------------------------------------------------------------------------------- tabular


def explain_rows(p, records: list[dict], target: str | None = None, steps: int = IG_STEPS) -> list[dict]:
    """Explanations for a tabular predictor: per row the prediction and one score per feature (Integrated
    Gradients on the scaled numeric inputs and the category embeddings, against the training mean / the
    unknown category)."""
    attr = _captum()
    preds = p.predict(records)
    x_num, x_cat = p.pre.transform(p._frame(records))
    model = p.model
    model.eval()
    regression = p.regression
    labels = None if regression else p.label_map.labels
    out = []
    for i, pred in enumerate(preds):
        c = None if regression else labels.index(target if target is not None else pred["label"])
        xn, xc = x_num[i:i + 1].float(), x_cat[i:i + 1]

        def forward(xn, emb_in):
            y = model(xn, emb_in).float()
            return y.squeeze(-1) if regression else torch.softmax(y, -1)

        with torch.enable_grad():
            ig = attr.IntegratedGradients(lambda xn: forward(xn, xc))
            a_num = ig.attribute(xn, baselines=torch.zeros_like(xn), target=c, n_steps=steps)[0] \
                if xn.shape[1] else torch.zeros(0)
            a_cat = torch.zeros(xc.shape[1])
            embs = getattr(model, "embeds", None)
            if xc.shape[1] and embs is not None:
                for j, emb in enumerate(embs):  # one categorical feature at a time, the rest held
                    lig = attr.LayerIntegratedGradients(lambda xc_: forward(xn, xc_), emb)
                    base = xc.clone()
                    base[0, j] = 0
                    a = lig.attribute(xc, baselines=base, target=c, n_steps=steps)
                    a_cat[j] = a.sum()
        feats = [{"feature": n, "score": round(float(v), 6)} for n, v in zip(p.pre.numeric, a_num.tolist())]
        feats += [{"feature": n, "score": round(float(v), 6)} for n, v in zip(p.pre.categorical, a_cat.tolist())]
        feats.sort(key=lambda f: -abs(f["score"]))
        out.append({**pred, "target": None if regression else labels[c],
                    "method": f"integrated gradients on the scaled features ({steps} steps, baseline: the training "
                              "mean, the unknown category; Captum)", "features": feats})
    return out


# ----------------------------------------------------------------------------------------------- images


def explain_images(p, images, target: str | None = None, steps: int = IG_STEPS) -> list[dict]:
    """Explanations for an image classification predictor: per image the prediction, a pixel attribution map
    (H x W, Integrated Gradients summed over channels, against the mean image) and its top regions."""
    attr = _captum()
    if not isinstance(images, (list, tuple)):
        images = [images]
    preds = p.predict(images)
    names = [str(v) if isinstance(v, (str, bytes)) is False and hasattr(v, "__fspath__") or isinstance(v, str)
             else f"input {i + 1}" for i, v in enumerate(images)]
    u8 = p._working(list(images), [str(n) for n in names])
    model = p.model
    model.eval()
    labels = p.label_map.labels
    out = []
    for i, pred in enumerate(preds):
        c = labels.index(target if target is not None else pred["label"])
        xi = u8[i:i + 1].float().div(255)
        with torch.enable_grad():
            ig = attr.IntegratedGradients(lambda v: torch.softmax(model(p.normalize(v)).float(), -1))
            a = ig.attribute(xi, baselines=torch.zeros_like(xi), target=c, n_steps=steps, internal_batch_size=steps)
        heat = a[0].sum(0).detach().cpu().numpy()
        out.append({**pred, "target": labels[c], "method": f"integrated gradients on the pixels ({steps} steps, "
                    "black baseline; Captum)", "attribution": heat,
                    "image": u8[i].permute(1, 2, 0).numpy()})
    return out


def overlay_png(image: np.ndarray, heat: np.ndarray, path) -> None:
    """The image with its positive attributions in red (alpha by strength), saved as a PNG, 4x enlarged when small."""
    from PIL import Image

    img = image if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, -1)
    h = np.clip(heat, 0, None)
    h = h / (h.max() or 1.0)
    red = np.zeros_like(img)
    red[..., 0] = 255
    alpha = (0.65 * h)[..., None]
    mixed = (img * (1 - alpha) + red * alpha).astype(np.uint8)
    im = Image.fromarray(mixed)
    if im.width < 128:
        im = im.resize((im.width * 4, im.height * 4), Image.NEAREST)
    im.save(path)


def needs_torch(p) -> None:
    """Explanations differentiate the model: a predictor on an ONNX export cannot give them."""
    if not isinstance(getattr(p, "model", None), torch.nn.Module):
        from luban.errors import LubanError

        raise LubanError("explanations need the PyTorch weights: load the run with backend torch "
                         "(luban explain does; luban serve --backend torch)")


def to_json(e: dict) -> dict:
    """An explanation ready for JSON: an image's attribution map becomes its overlay as a PNG data URL (and the
    map, downsampled to at most 64 x 64)."""
    if "attribution" not in e:
        return e
    import base64
    import tempfile

    out = {k: v for k, v in e.items() if k not in ("attribution", "image")}
    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/overlay.png"
        overlay_png(e["image"], e["attribution"], path)
        with open(path, "rb") as f:
            out["overlay_png"] = "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")
    heat = e["attribution"]
    step = max(1, int(np.ceil(max(heat.shape) / 64)))
    out["attribution"] = np.round(heat[::step, ::step], 6).tolist()
    return out


def report_section(explanations: list[dict]) -> str:
    """report.html: the explained texts, each character shaded by its score (green toward the explained class, red
    against), with the true and predicted class."""
    import html

    rows = []
    for e in explanations:
        peak = max((abs(v) for v in e["chars"]), default=0) or 1.0
        cells = []
        for ch, v in zip(e["text"][:400], e["chars"]):
            a = min(1.0, abs(v) / peak) * 0.75
            color = f"rgba(10,123,52,{a:.2f})" if v > 0 else f"rgba(179,38,30,{a:.2f})"
            cells.append(f'<span style="background:{color}" title="{v:+.4f}">{html.escape(ch)}</span>')
        top = ", ".join(html.escape(t["text"]) for t in sorted(e["tokens"], key=lambda t: -t["score"])[:5])
        rows.append(f"<tr><td class=l>{html.escape(str(e.get('true', '')))}</td><td class=l>{html.escape(e['label'])}"
                    f" ({e['score']:.3f})</td><td class=l style=\"line-height:1.7\">{''.join(cells)}</td>"
                    f"<td class=l>{top}</td></tr>")
    method = explanations[0]["method"] if explanations else ""
    return ("<h2>Why the most confidently wrong test examples were predicted so</h2><table><tr><th class=l>true</th>"
            "<th class=l>predicted</th><th class=l>text (green: toward the prediction, red: against)</th>"
            "<th class=l>top tokens</th></tr>" + "".join(rows) + f"</table><p class=muted>{html.escape(method)}; "
            "<code>luban explain RUN --text ...</code> explains any text.</p>")
