"""Image generation: a DCGAN (optionally class-conditional) trained on an image folder or the built-in digits.

Training is the shared engine's, with the task's own step (`GANStep`): per batch a discriminator update then a
generator update, with two Adam optimizers (trainer.lr, or model.lr_discriminator for the discriminator; betas
(model.beta1, 0.999)); trainer.grad_clip, l1 and grad_accumulation do not apply to it.
Quality is measured, not eyeballed: before the GAN trains, a small CNN classifier is trained on the real training
images (saved in the run as classifier/); every epoch the GAN's samples are scored with it — mean_confidence,
class_entropy_ratio and kid (see luban.evaluate.generative) — and the best checkpoint is the lowest validation kid.
Each epoch also writes a fixed-noise sample grid to samples/epoch_XX.png, shown in report.html.

Inference: `luban.load(run).generate(n=64, label=None, seed=0, out="grid.png")`. `predict()` is not offered for
this task: it raises a LubanError pointing at generate (samples' classifier labels come back from generate).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

import luban.processor as processor
from luban.capabilities import GeneratesImages, TaskPredictor
from luban.config import RunConfig
from luban.data.images import ImageStore, resolve_image_paths
from luban.data.readers import LINE, resolve_column
from luban.data.splits import make_splits
from luban.errors import DataError, LubanError, TrainingDiverged
from luban.evaluate import generative as gm
from luban.models.gan import GAN, ImageScorer
from luban.tasks.base import Batches, Task, _label_key
from luban.models.registry import build_model
from luban.training import checkpoint
from luban.training.hardware import autocast
from luban.training.optim import build_scheduler
from luban.training.step import StepResult, TrainStep

CLASSIFIER = "classifier"
MIN_CLASSIFIER_STEPS = 150


# ----------------------------------------------------------------------------------------------- data


def _to_chw(img: np.ndarray, size: int, resize: int | None, gray: bool) -> np.ndarray:
    """HxWxC uint8 -> CxSxS float32 in [-1, 1]: resize the shorter side, center-crop, optional grayscale."""
    from PIL import Image

    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if gray and arr.shape[2] == 3:
        arr = np.asarray(Image.fromarray(arr).convert("L"))[:, :, None]
    h, w = arr.shape[:2]
    if (h, w) != (size, size):
        short = resize or size
        im = Image.fromarray(arr[:, :, 0] if arr.shape[2] == 1 else arr)
        s = short / min(h, w)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        im = im.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        arr = np.asarray(im.crop((left, top, left + size, top + size)))
        if arr.ndim == 2:
            arr = arr[:, :, None]
    return arr.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0


def _frame_images(cfg: RunConfig, frame: pd.DataFrame) -> tuple[list, pd.DataFrame]:
    """The raw images of a frame (uint8 arrays, decoded from paths when needed) and the rows kept."""
    col = resolve_column(frame, cfg.data.columns.image if cfg.data.columns.image is not None else "image", "image")
    values = list(frame[col])
    if values and all(isinstance(v, np.ndarray) for v in values):
        return values, frame
    mode = "L" if cfg.preprocessing.image.grayscale else "RGB"
    store = ImageStore(resolve_image_paths(frame, col, cfg.data.image_root), mode)
    bad = set(store.decode_all(cfg.data.skip_bad_files))
    if bad:
        print(f"skipped {len(bad)} unreadable images in {frame.attrs.get('source', 'data')}", file=sys.stderr)
    keep = [i for i in range(len(store)) if i not in bad]
    out = frame.iloc[keep].reset_index(drop=True)
    out.attrs = dict(frame.attrs)
    return [store[i] for i in keep], out


class ImageSet:
    """One split: images (N, C, S, S) in [-1, 1] and label ids."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)


# ----------------------------------------------------------------------------------------------- helpers


class _Pair:
    """Two optimizers (or schedulers) behind one state_dict / load_state_dict, for the shared checkpoint code."""

    def __init__(self, g, d):
        self.g, self.d = g, d

    def state_dict(self):
        return {"g": self.g.state_dict(), "d": self.d.state_dict()}

    def load_state_dict(self, blob):
        self.g.load_state_dict(blob["g"])
        self.d.load_state_dict(blob["d"])


def train_scorer(train: ImageSet, num_classes: int, epochs: int, seed: int, device: torch.device,
                 batch_size: int = 64) -> ImageScorer:
    """The quality classifier: a small CNN trained on the real training images (its own RNG, so it does not
    disturb the GAN's)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ImageScorer(train.images.shape[1], num_classes).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    n = len(train)
    per_epoch = math.ceil(n / batch_size)
    epochs = max(epochs, math.ceil(MIN_CLASSIFIER_STEPS / per_epoch))  # tiny datasets still get enough steps
    steps = epochs * per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(1, steps))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            if len(idx) < 2:
                continue
            x = train.images[idx]
            # light augmentation: random shifts of up to 1/8 of the side
            s = max(1, x.shape[-1] // 8)
            dx, dy = (int(v) for v in torch.randint(-s, s + 1, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x.to(device)), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def score(scorer: ImageScorer, images: torch.Tensor, device: torch.device, batch_size: int = 500):
    """(softmax probabilities, penultimate features) as numpy arrays."""
    scorer.eval()
    probs, feats = [], []
    for i in range(0, len(images), batch_size):
        f = scorer.features(images[i:i + batch_size].to(device)).float()
        probs.append(torch.softmax(scorer.head(f), dim=-1).cpu())
        feats.append(f.cpu())
    return torch.cat(probs).numpy(), torch.cat(feats).numpy()


def build_gan(cfg: RunConfig, channels: int, num_classes: int) -> GAN:
    return build_model(cfg.model, cfg.task, channels=channels, num_classes=num_classes,
                       image_size=cfg.preprocessing.image.size)


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


class _Sampling:
    """What training and inference share: sample generation and scoring."""

    cfg: RunConfig
    device: torch.device
    labels: list[str]
    scorer: ImageScorer

    def _conditional(self, model: GAN) -> bool:
        return model.num_classes > 0

    def generate_tensor(self, model: GAN, n: int, seed: int, label_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self._conditional(model) and label_ids is None:
            label_ids = balanced_labels(n, model.num_classes)
        if not self._conditional(model):
            label_ids = None
        return model.sample(n, label_ids, torch.Generator().manual_seed(seed), self.device)

    def sample_metrics(self, model: GAN, real_features: np.ndarray, n: int, seed: int) -> dict:
        fake = self.generate_tensor(model, n, seed)
        probs, feats = score(self.scorer, fake, self.device)
        return {"mean_confidence": gm.mean_confidence(probs),
                "class_entropy_ratio": gm.class_entropy_ratio(probs, len(self.class_names)),
                "kid": gm.kid(real_features, feats, seed=seed)}


# ----------------------------------------------------------------------------------------------- training


class ImageGenerationTask(Task, _Sampling):
    name = "image_generation"
    main_metric = "kid"
    mode = "min"

    # set by prepare()
    labels: list[str]
    data: dict[str, ImageSet]
    channels: int
    # set when training starts (GANStep.start): the quality classifier, its metrics, its features of real images
    scorer: ImageScorer
    scorer_meta: dict
    real_features: dict[str, np.ndarray]
    model_ref: GAN | None = None  # the trained model, for the report's sample grid

    def prepare(self, frames):
        cfg = self.cfg
        size, img_cfg = cfg.preprocessing.image.size, cfg.preprocessing.image
        cols = cfg.data.columns
        rows = {}
        for split, frame in frames.items():
            if frame is None:
                rows[split] = None
                continue
            images, frame = _frame_images(cfg, frame)
            label_ref = cols.label if cols.label is not None else ("label" if "label" in frame.columns else None)
            if label_ref is not None:  # a folder listing has a label column (its sub-folder names)
                label_col = resolve_column(frame, label_ref, "label")
                labels = [None if v is None else str(v).strip() for v in frame[label_col]]
                missing = [i for i, v in enumerate(labels) if not v]
                if missing:
                    raise DataError(f"{frame.attrs.get('source', split)}: line {frame[LINE].iloc[missing[0]]}: "
                                    f"field {label_col!r}: missing label")
            else:
                labels = ["0"] * len(frame)
            out = pd.DataFrame({"image": range(len(images)), "label": labels, LINE: list(frame[LINE])})
            out.attrs = dict(frame.attrs)
            rows[split] = (out, images)
        train_labels = sorted(set(rows["train"][0]["label"]), key=_label_key)
        if len(train_labels) < 2:
            raise DataError(f"{frames['train'].attrs.get('source', 'train')}: image generation needs at least two "
                            "classes (one sub-folder per class): the quality classifier that scores samples is "
                            f"trained on them (found {len(train_labels)})")
        self.class_names = train_labels
        index = {l: i for i, l in enumerate(train_labels)}
        # each split's frame carries the row's image position so make_splits can shuffle rows freely
        tagged = {}
        for split, item in rows.items():
            if item is None:
                tagged[split] = None
                continue
            f, images = item
            f = f.copy()
            f["image"] = [(split, i) for i in range(len(images))]
            unknown = ~f["label"].isin(index)
            if unknown.any():
                r = f[unknown].iloc[0]
                raise DataError(f"{f.attrs.get('source', split)}: line {r[LINE]}: label {r['label']!r} was not seen "
                                f"in training (known: {', '.join(train_labels[:20])})")
            tagged[split] = f
        raw = {split: item[1] for split, item in rows.items() if item is not None}
        splits = make_splits(tagged, cfg.data.split.validation, cfg.data.split.test,
                             cfg.data.split.seed if cfg.data.split.seed is not None else cfg.seed,
                             "label" if cfg.data.split.stratify else None)
        self.data = {}
        for split, f in splits.items():
            arrs = [_to_chw(raw[s][i], size, img_cfg.resize, img_cfg.grayscale) for s, i in f["image"]]
            shapes = {a.shape for a in arrs}
            if len(shapes) > 1:
                raise DataError(f"{f.attrs.get('source', split)}: images have different channel counts "
                                f"{sorted(shapes)}; set preprocessing.image.grayscale: true or convert them")
            self.data[split] = ImageSet(torch.from_numpy(np.stack(arrs)),
                                        torch.as_tensor([index[l] for l in f["label"]], dtype=torch.long))
        self.channels = int(self.data["train"].images.shape[1])

    def data_summary(self):
        return {"splits": {s: len(d) for s, d in self.data.items()}, "labels": self.class_names,
                "image_size": self.cfg.preprocessing.image.size, "channels": self.channels}

    def build_model(self):
        return build_gan(self.cfg, self.channels, len(self.class_names))

    def train_batches(self, epoch):
        """Full batches of a seeded shuffle (the last partial batch is dropped; one batch when there are fewer
        rows than trainer.batch_size)."""
        train, bs = self.data["train"], self.cfg.trainer.batch_size
        n = len(train)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed * 1000 + epoch))
        n_batches = max(1, n // bs) if n >= bs else 1
        return Batches([order[b * bs:(b + 1) * bs].tolist() for b in range(n_batches)],
                       lambda idx: {"x": train.images[idx], "y": train.labels[idx], "size": len(idx)})

    def train_step(self):
        return GANStep(self)

    # ------------------------------------------------------------------ quality classifier

    def _prepare_scorer(self, workdir: Path):
        folder = workdir / CLASSIFIER
        m = self.cfg.model
        if (folder / checkpoint.WEIGHTS).is_file():
            self.scorer = ImageScorer(self.channels, len(self.class_names)).to(self.device)
            checkpoint.load_weights(self.scorer, folder)
            self.scorer.eval()
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        else:
            t0 = time.perf_counter()
            self.scorer = train_scorer(self.data["train"], len(self.class_names), m.classifier_epochs, self.cfg.seed,
                                       self.device)
            meta = {"epochs": m.classifier_epochs, "seconds": round(time.perf_counter() - t0, 2)}
            for split in ("validation", "test"):
                probs, _ = score(self.scorer, self.data[split].images, self.device)
                meta[f"{split}_accuracy"] = float((probs.argmax(1) == self.data[split].labels.numpy()).mean())
            checkpoint.save_weights(self.scorer, folder)
            (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
            print(f"quality classifier: test accuracy {meta['test_accuracy']:.4f} ({meta['seconds']:.1f}s)",
                  file=sys.stderr, flush=True)
        self.scorer_meta = meta
        self.real_features = {s: score(self.scorer, self.data[s].images, self.device)[1]
                              for s in ("validation", "test")}

    def evaluate(self, model, split, detailed=False):
        m = self.cfg.model
        out = self.sample_metrics(model, self.real_features[split], m.eval_samples,
                                  self.cfg.seed + (1 if split == "validation" else 2))
        out["classifier_accuracy"] = self.scorer_meta[f"{split}_accuracy"]
        if detailed:
            out["real_vs_real_kid"] = gm.kid(self.real_features["validation"], self.real_features["test"])
            out["samples"] = m.eval_samples
        return out

    def baseline(self):
        return None

    # ------------------------------------------------------------------ the GAN loop

    def _sample_grid(self, model: GAN) -> tuple[np.ndarray, int]:
        k = len(self.class_names)
        if model.num_classes and k <= 16:
            ncols, n = k, k * max(1, 64 // k)
            label_ids = torch.arange(n) % k  # one class per column
        else:
            ncols, n, label_ids = 8, 64, None
        imgs = self.generate_tensor(model, n, self.cfg.seed + 1000, label_ids)
        scale = max(1, 64 // self.cfg.preprocessing.image.size)
        return gm.image_grid(imgs.numpy(), ncols, scale=scale), ncols

    # ------------------------------------------------------------------ outputs

    def save(self, folder, model):
        checkpoint.save_weights(self.scorer, folder / CLASSIFIER)
        meta = {"labels": self.class_names, "channels": self.channels, "size": self.cfg.preprocessing.image.size,
                "num_classes": len(self.class_names), "classifier": self.scorer_meta}
        processor.save(folder, self.cfg.task, model=meta)

    def report_sections(self, workdir, final):
        from luban.evaluate.report import E, _line_chart, png_data_uri

        parts = ["<h2>Sample quality (test)</h2><table><tr><th class=l>metric</th><th>validation</th>"
                 "<th>test</th></tr>"]
        for k in ("kid", "mean_confidence", "class_entropy_ratio", "classifier_accuracy", "real_vs_real_kid"):
            v, t = final["validation"].get(k), final["test"].get(k)
            if t is not None:
                parts.append(f"<tr><td class=l>{E(k)}</td><td>{v:.4f}</td><td>{t:.4f}</td></tr>")
        parts.append("</table><p class=muted>scored on generated samples by a CNN trained on the real training "
                     "images; kid is the polynomial-kernel MMD² between its features of real test images and of "
                     "samples (lower is better); real_vs_real_kid is the validation-vs-test floor.</p>")
        hist_path = workdir / "history.jsonl"
        hist = [json.loads(l) for l in hist_path.read_text(encoding="utf-8").splitlines()] if hist_path.is_file() \
            else []
        if hist:
            xs = [h["epoch"] for h in hist]
            parts.append("<h2>GAN training</h2><div class=charts>"
                         + _line_chart("losses", xs, {"d_loss": [h["d_loss"] for h in hist],
                                                      "g_loss": [h["g_loss"] for h in hist]})
                         + _line_chart("discriminator outputs", xs, {"D(x)": [h["d_real"] for h in hist],
                                                                     "D(G(z))": [h["d_fake"] for h in hist]})
                         + _line_chart("validation sample quality", xs,
                                       {"mean_confidence": [h["val_mean_confidence"] for h in hist],
                                        "class_entropy_ratio": [h["val_class_entropy_ratio"] for h in hist]})
                         + "</div>")
        model = self.model_ref
        if model is not None:
            grid, _ = self._sample_grid(model)
            gm.save_png(grid, workdir / "samples" / "best.png")
            parts.append("<h2>Samples from the best checkpoint</h2>"
                         f"<p class=muted>fixed noise{'; one class per column: ' + E(', '.join(self.class_names)) if model.num_classes and len(self.class_names) <= 16 else ''}</p>"
                         f'<img alt="samples" style="image-rendering:pixelated" src="{png_data_uri(grid)}">')
        epochs = sorted((workdir / "samples").glob("epoch_*.png"))
        if epochs:
            from PIL import Image

            parts.append("<h2>Samples per epoch (fixed noise)</h2><div class=charts>")
            for p in epochs:
                with Image.open(p) as im:
                    parts.append(f'<figure style="margin:0"><img alt="{E(p.stem)}" width="200" '
                                 f'style="image-rendering:pixelated" src="{png_data_uri(im.copy())}">'
                                 f"<figcaption class=muted>{E(p.stem.replace('_', ' '))}</figcaption></figure>")
            parts.append("</div>")
        return parts


class GANStep(TrainStep):
    """One batch of GAN training for the shared engine: a discriminator update (real images vs detached samples,
    real targets smoothed by model.label_smoothing), then a generator update, each with its own Adam optimizer and
    lr schedule. Before the first batch the quality classifier is trained (or loaded on --resume) and the samples/
    folder made; each epoch adds the mean d_loss/g_loss/D(x)/D(G(z)) to history and a fixed-noise sample grid to
    samples/epoch_XX.png. Not for distributed training."""

    distributed = False

    def __init__(self, task: ImageGenerationTask):
        self.task = task

    def batches(self, epoch):
        return self.task.train_batches(epoch)

    def autocast_precision(self, precision):
        return precision if precision == "bf16" else "fp32"  # bf16 autocast or full precision, never fp16

    def start(self, model, cfg, n_batches, device, precision, workdir):
        task, m = self.task, self.task.cfg.model
        task.model_ref = model
        task._prepare_scorer(workdir)
        self.device, self.precision = device, self.autocast_precision(precision)
        self.real_target = 1.0 - m.label_smoothing
        G, D = model.generator, model.discriminator
        self.optimizer = _Pair(torch.optim.Adam(G.parameters(), lr=cfg.lr, betas=(m.beta1, 0.999)),
                               torch.optim.Adam(D.parameters(), lr=m.lr_discriminator or cfg.lr,
                                                betas=(m.beta1, 0.999)))
        total = cfg.epochs * n_batches
        self.scheduler = _Pair(build_scheduler(self.optimizer.g, cfg, total),
                               build_scheduler(self.optimizer.d, cfg, total))
        (workdir / "samples").mkdir(exist_ok=True)

    @property
    def lr(self):
        return self.optimizer.g.param_groups[0]["lr"]

    def __call__(self, model, batch, *, index, count, epoch):
        G, D, opt, device = model.generator, model.discriminator, self.optimizer, self.device
        x = batch["x"].to(device)
        y = batch["y"].to(device) if model.num_classes > 0 else None
        z = torch.randn(len(x), model.latent_dim, device=device)
        with autocast(device, self.precision):
            fake = G(z, y)
            real_logits = D(x, y).float()
            fake_logits = D(fake.detach(), y).float()
            d_loss = (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.real_target))
                      + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        opt.d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt.d.step()
        with autocast(device, self.precision):
            g_logits = D(fake, y).float()
            g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
        opt.g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt.g.step()
        self.scheduler.g.step()
        self.scheduler.d.step()
        if not (torch.isfinite(d_loss) and torch.isfinite(g_loss)):
            raise TrainingDiverged(f"the GAN losses became non-finite at epoch {epoch + 1}, batch {index + 1} "
                                   f"(d_loss {d_loss.item()}, g_loss {g_loss.item()})")
        d, g = d_loss.item(), g_loss.item()
        return StepResult(d + g, len(x), values={"d_loss": d, "g_loss": g,
                                                 "d_real": torch.sigmoid(real_logits).mean().item(),
                                                 "d_fake": torch.sigmoid(fake_logits).mean().item()})

    def end_epoch(self, model, record, workdir):
        record["train_loss"] = record["g_loss"] + record["d_loss"]
        grid, _ = self.task._sample_grid(model)
        gm.save_png(grid, workdir / "samples" / f"epoch_{record['epoch']:02d}.png")

    def epoch_text(self, record, metric, improved):
        if record.get("partial"):  # a mid-epoch evaluation (trainer.eval_steps): the engine's line
            return None
        return (f"epoch {record['epoch']}: d_loss {record['d_loss']:.3f}  g_loss {record['g_loss']:.3f}  "
                f"D(x) {record['d_real']:.2f}  D(G(z)) {record['d_fake']:.2f}  "
                f"conf {record['val_mean_confidence']:.3f}  entropy {record['val_class_entropy_ratio']:.3f}  "
                f"kid {record['val_kid']:.4f}{' *' if improved else ''}  {record['epoch_seconds']:.1f}s")


# ----------------------------------------------------------------------------------------------- inference


class ImageGenerationPredictor(TaskPredictor, _Sampling, GeneratesImages):
    task = "image_generation"
    unsupported = {"predict": "image_generation runs do not predict; sample with `luban generate-images RUN` or "
                              "luban.load(RUN).generate(n=..., label=...)",
                   "evaluate": "image_generation runs are evaluated during training (see metrics.json); "
                               "`luban evaluate` does not apply"}

    def __init__(self, cfg, folder, device):
        super().__init__(cfg, folder, device)
        meta = processor.load(folder)["model"]
        self.class_names = [str(l) for l in meta["labels"]]
        self.model = build_gan(cfg, meta["channels"], len(self.class_names))
        checkpoint.load_weights(self.model, folder)
        self.model.to(device).eval()
        self.scorer = ImageScorer(meta["channels"], len(self.class_names))
        checkpoint.load_weights(self.scorer, folder / CLASSIFIER)
        self.scorer.to(device).eval()

    def _label_id(self, label) -> int | None:
        if label is None:
            return None
        if not self.model.num_classes:
            raise LubanError("generate: this model is unconditional (model.conditional: false); drop --label")
        key = str(label).strip()
        if key not in self.class_names:
            raise LubanError(f"generate: unknown label {label!r}; known: {', '.join(self.class_names)}")
        return self.class_names.index(key)

    def generate(self, n: int = 64, label=None, seed: int = 0, out: str | Path | None = None,
                 ncols: int | None = None) -> dict:
        """n samples; balanced over the classes unless `label` is given. Writes a PNG grid when `out` is set
        (returns {"images", "out", "label", "classifier_labels"}); without `out` also returns the arrays:
        "samples" (N, C, H, W float32 in [-1, 1]) and "arrays" (N, H, W, C uint8)."""
        if not isinstance(n, int) or n < 1:
            raise LubanError(f"generate: n must be a positive integer (got {n!r})")
        lid = self._label_id(label)
        label_ids = torch.full((n,), lid, dtype=torch.long) if lid is not None else None
        imgs = self.generate_tensor(self.model, n, seed, label_ids)
        probs, _ = score(self.scorer, imgs, self.device)
        res = {"images": n, "out": None, "label": None if lid is None else self.class_names[lid],
               "classifier_labels": [self.class_names[i] for i in probs.argmax(1)],
               "mean_confidence": round(gm.mean_confidence(probs), 4)}
        if out is not None:
            out = Path(out)
            if out.parent and not out.parent.exists():
                out.parent.mkdir(parents=True, exist_ok=True)
            cols = ncols or max(1, math.ceil(math.sqrt(n)))
            gm.save_png(gm.image_grid(imgs.numpy(), cols, scale=max(1, 32 // self.model.size)), out)
            res["out"] = str(out)
        else:
            res["samples"] = imgs.numpy()
            res["arrays"] = gm.to_uint8(imgs.numpy())
        return res

    def class_labels(self):
        return self.class_names
