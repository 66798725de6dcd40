"""Image classification: training from folders / CSV, predict round-trips, bad files, the digits builtin and a tiny
pretrained HF backbone. Synthetic images are written as PNGs into tmp folders (offline, a few seconds each)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import luban
from luban.errors import DataError
from tests.conftest import assert_no_run, assert_run_layout, deep_update

PIL_MODES = ["RGB", "RGB", "RGBA", "L"]  # some training images are RGBA or grayscale: all are converted


def stripes(kind: str, rng: np.random.Generator, side: int = 16) -> np.ndarray:
    """Horizontal or vertical stripes with a random phase, period, colour and noise."""
    period = int(rng.integers(3, 6))
    phase = int(rng.integers(period))
    coord = np.arange(side)[:, None] if kind == "horizontal" else np.arange(side)[None, :]
    on = ((coord + phase) // (period / 2)) % 2 == 0
    base = np.broadcast_to(on, (side, side)).astype(np.float32)
    color = rng.uniform(0.5, 1.0, 3)
    img = base[:, :, None] * color[None, None, :] * 200 + rng.normal(0, 12, (side, side, 3)) + 25
    return np.clip(img, 0, 255).astype(np.uint8)


def write_image(arr: np.ndarray, path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode == "RGBA":
        im = im.convert("RGBA")
        im.putalpha(255)
    elif mode == "L":
        im = im.convert("L")
    im.save(path)
    return path


def write_stripes(root: Path, n_per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind in ("horizontal", "vertical"):
        for i in range(n_per_class):
            write_image(stripes(kind, rng), root / kind / f"{kind[0]}{i:03d}.png", PIL_MODES[i % len(PIL_MODES)])
    return root


def image_config(out_dir: Path, name: str, train, **extra) -> dict:
    cfg = {
        "task": "image_classification",
        "seed": 5,
        "data": {"train": str(train)},
        "preprocessing": {"image": {"size": 16, "resize": 16,
                                    "augment": {"random_resized_crop": [0.8, 1.0], "hflip": False}}},
        "model": {"type": "resnet", "widths": [8, 16], "blocks": [1, 1]},
        "trainer": {"epochs": 6, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0, "num_threads": 1,
                    "scheduler": "cosine", "device": "cpu", "log_every": 1000},
        "evaluation": {"baseline": False, "worst_examples": 5},
        "output": {"dir": str(out_dir), "name": name, "tensorboard": False},
    }
    return deep_update(cfg, extra)


@pytest.fixture(scope="module")
def stripes_run(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("stripes")
    train = write_stripes(root / "train", 40, seed=1)
    test = write_stripes(root / "test", 15, seed=2)
    run = luban.train(image_config(root / "runs", "stripes", train, data={"test": str(test)}), quiet=True)
    return {"run": run, "root": root, "train": train, "test": test,
            "metrics": json.loads((run / "metrics.json").read_text(encoding="utf-8"))}


def test_learns_stripes_from_folders(stripes_run):
    m = stripes_run["metrics"]
    assert m["test"]["accuracy"] >= 0.9, m["test"]
    assert m["data"]["splits"] == {"train": 72, "validation": 8, "test": 30}
    assert set(m["test"]) >= {"accuracy", "f1_macro", "confusion_matrix"}
    parts = assert_run_layout(stripes_run["run"])
    meta = parts["image"]
    assert meta["channels"] == 3 and len(meta["mean"]) == 3 and all(0 < s < 1 for s in meta["std"])
    assert parts["labels"] == ["horizontal", "vertical"]
    report = (stripes_run["run"] / "report.html").read_text(encoding="utf-8")
    assert "Confusion matrix" in report
    history = [json.loads(l) for l in (stripes_run["run"] / "history.jsonl").read_text().splitlines()]
    assert all(h["val_loss"] > 0 for h in history)  # the loss on the (unaugmented) validation crops


def test_predict_file_folder_csv_and_arrays(stripes_run, tmp_path):
    p = luban.load(stripes_run["run"])
    test = stripes_run["test"]
    one = test / "vertical" / "v000.png"
    [r] = p.predict_file(one)
    assert r["image"] == str(one) and r["label"] == "vertical" and set(r["probabilities"]) == {"horizontal",
                                                                                               "vertical"}
    rows = p.predict_file(test, top_k=1)  # folder-per-class: just the images, recursively
    assert len(rows) == 30 and all(len(r["probabilities"]) == 1 for r in rows)
    right = sum(r["label"] == Path(r["image"]).parent.name for r in rows)
    assert right >= 27
    csv = tmp_path / "list.csv"
    csv.write_text("image\n" + "".join(f"{f.relative_to(test)}\n" for f in sorted(test.rglob("*.png"))[:4]),
                   encoding="utf-8")
    import shutil

    shutil.copytree(test, tmp_path, dirs_exist_ok=True)  # paths in the CSV are relative to its folder
    assert len(p.predict_file(csv)) == 4
    rng = np.random.default_rng(9)
    arr = stripes("horizontal", rng)
    res = p.predict([arr, Image.fromarray(arr), str(test / "horizontal" / "h001.png")])
    assert [r["label"] for r in res] == ["horizontal"] * 3 and res[0]["image"] == "input 1"
    metrics = p.evaluate(test)
    assert metrics["accuracy"] >= 0.9 and "worst_examples" in metrics


def test_cli_predict_top_k(stripes_run):
    out = subprocess.run([sys.executable, "-m", "luban", "predict", str(stripes_run["run"]), "--input",
                          str(stripes_run["test"] / "horizontal" / "h000.png"), "--top-k", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["label"] == "horizontal" and list(row["probabilities"]) == ["horizontal"]


def test_csv_listing_with_image_root(stripes_run, tmp_path, out_dir):
    train = stripes_run["train"]
    files = sorted(train.rglob("*.png"))[::2]
    listing = tmp_path / "sub" / "train.jsonl"
    listing.parent.mkdir()
    listing.write_text("".join(json.dumps({"file": str(f.relative_to(train)), "cls": f.parent.name}) + "\n"
                               for f in files), encoding="utf-8")
    cfg = image_config(out_dir, "jsonl", listing, data={"columns": {"image": "file", "label": "cls"},
                                                        "image_root": str(train)}, trainer={"epochs": 1})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert sum(m["data"]["splits"].values()) == len(files)


def _bad_folder(root: Path, bad: str) -> tuple[Path, Path]:
    write_stripes(root, 6, seed=3)
    f = root / "vertical" / "broken.png"
    if bad == "corrupt":
        f.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    elif bad == "truncated":
        buf = root / "tmp.png"
        write_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8), buf)
        f.write_bytes(buf.read_bytes()[:300])
        buf.unlink()
    else:  # not an image at all
        f.write_text("label,text\n1,hello\n", encoding="utf-8")
    return root, f


@pytest.mark.parametrize("bad", ["corrupt", "truncated", "text"])
def test_bad_image_names_the_file(tmp_path, out_dir, bad):
    train, f = _bad_folder(tmp_path / "train", bad)
    with pytest.raises(DataError, match=r"broken\.png.*; to skip unreadable files .*set data\.skip_bad_files: true"):
        luban.train(image_config(out_dir, "bad", train), quiet=True)
    assert_no_run(out_dir, "bad")


def test_missing_file_in_csv(tmp_path, out_dir):
    train = write_stripes(tmp_path / "imgs", 6, seed=4)
    rows = [f"{f.relative_to(tmp_path)},{f.parent.name}" for f in sorted(train.rglob("*.png"))]
    listing = tmp_path / "train.csv"
    listing.write_text("path,label\n" + "\n".join(rows + ["imgs/vertical/nope.png,vertical"]) + "\n",
                       encoding="utf-8")
    cfg = image_config(out_dir, "missing", listing, data={"columns": {"image": "path", "label": "label"}})
    with pytest.raises(DataError, match=r"nope\.png: image file not found"):
        luban.train(cfg, quiet=True)
    assert_no_run(out_dir, "missing")


def test_skip_bad_files_counts(tmp_path, out_dir, capsys):
    train, _ = _bad_folder(tmp_path / "train", "corrupt")
    (train / "horizontal" / "notes.png").write_text("not an image", encoding="utf-8")
    run = luban.train(image_config(out_dir, "skip", train, data={"skip_bad_files": True},
                                   trainer={"epochs": 1}))  # (quiet=True would print nothing at all)
    out = capsys.readouterr()
    assert "skipped 2 unreadable image(s) of 14" in out.out + out.err
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert sum(m["data"]["splits"].values()) == 12
    assert m["data"]["cleaning"][0]["dropped"] == {"unreadable images": 2}


def test_rgba_grayscale_and_exif(tmp_path):
    from luban.tasks.image_classification import load_one

    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:, :10, 3] = 255  # left half opaque red, right half transparent (-> white)
    p = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(p)
    w = load_one(p, "RGB", 10, "a")
    assert w.shape == (3, 10, 10) and w.dtype == np.uint8
    g = load_one(p, "L", 10, "a")
    assert g.shape == (1, 10, 10)
    gray = tmp_path / "g.png"
    Image.fromarray(np.full((12, 12), 77, np.uint8), "L").save(gray)
    assert load_one(gray, "RGB", 12, "g").shape == (3, 12, 12)
    # EXIF orientation 6 (rotate 90° clockwise when shown): a 20 wide x 10 high file is shown 10 wide x 20 high
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, :10] = 255  # the stored left half is white -> after the rotation the top half is white
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    f = tmp_path / "rot.jpg"
    im.save(f, exif=exif.tobytes(), quality=95)
    from luban.data.images import decode_image

    d = decode_image(f)
    assert d.shape == (20, 10, 3)
    assert d[:8].mean() > 200 and d[12:].mean() < 50
    rot = load_one(Image.open(f), "RGB", 10, "pil")  # a PIL image handed to predict() is rotated too
    assert rot.shape == (3, 10, 10)


def test_augmentation_is_seeded_and_shaped():
    from luban.config import validate
    from luban.tasks.image_classification import ImageClassificationTask

    cfg = validate({"task": "image_classification", "data": {"builtin": "digits"},
                    "preprocessing": {"image": {"size": 8, "resize": 10, "augment": {
                        "random_resized_crop": [0.5, 1.0], "hflip": True, "color_jitter": 0.3, "randaugment": 2,
                        "mixup": 0.2, "cutmix": 1.0}}}})
    from luban.tasks.base import read_frames

    task = ImageClassificationTask(cfg)
    task.prepare(read_frames(cfg))
    assert sum(len(d) for d in task.data.values()) == 1797
    assert task.data["train"].working.shape[1:] == (3, 10, 10)
    task.meta["in_channels"] = 3
    a = task.augment_batch(torch.arange(32), [1, 2, 3])
    b = task.augment_batch(torch.arange(32), [1, 2, 3])
    assert a["x"].shape == (32, 3, 8, 8) and torch.isfinite(a["x"]).all()
    assert torch.equal(a["x"], b["x"]) and a.get("lam") == b.get("lam")
    assert 0 <= a["x"].min() and a["x"].max() <= 1.0 + 1e-6


def test_digits_builtin_trains(out_dir):
    cfg = image_config(out_dir, "digits", "x", data={"builtin": "digits", "train": None},
                       preprocessing={"image": {"size": 8, "resize": 8, "grayscale": True,
                                                "augment": {"random_resized_crop": None}}},
                       model={"widths": [16, 32]}, trainer={"epochs": 4, "batch_size": 32, "lr": 0.005})
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert m["test"]["accuracy"] > 0.8
    assert m["data"]["image"]["channels"] == 1
    p = luban.load(run)
    import sklearn.datasets

    d = sklearn.datasets.load_digits()
    preds = p.predict([d.images[i] / 16 for i in range(20)])
    assert sum(r["label"] == str(d.target[i]) for i, r in enumerate(preds)) >= 14


def _tiny_backbone(folder: Path, kind: str) -> Path:
    torch.manual_seed(0)
    if kind == "vit":
        from transformers import ViTConfig, ViTImageProcessor, ViTModel

        ViTModel(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64)).save_pretrained(str(folder))
        ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(str(folder))
    else:
        from transformers import ResNetConfig, ResNetModel

        ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(
            str(folder))
    return folder


@pytest.mark.parametrize("kind,freeze", [("vit", False), ("resnet", True)])
def test_pretrained_backbone_trains_and_reloads(stripes_run, tmp_path, out_dir, kind, freeze):
    pytest.importorskip("transformers")
    folder = _tiny_backbone(tmp_path / kind, kind)
    cfg = image_config(out_dir, kind, stripes_run["train"], data={"test": str(stripes_run["test"])},
                       preprocessing={"image": {"normalize": "backbone"}},
                       model={"type": "pretrained_image", "path": str(folder), "freeze": freeze},
                       trainer={"epochs": 2, "lr": 0.003, "precision": "fp32"})
    cfg["model"].pop("widths"), cfg["model"].pop("blocks")
    run = luban.train(cfg, quiet=True)
    m = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    meta = assert_run_layout(run)["image"]
    if kind == "vit":
        assert meta["mean"] == [0.5, 0.5, 0.5]  # from the backbone's image processor
        assert m["parameters"]["trainable"] == m["parameters"]["total"]
    else:
        assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])  # no processor saved: ImageNet
        assert m["parameters"]["trainable"] == 16 * 2 + 2  # frozen backbone: only the head trains
    assert (run / "model" / "backbone" / "config.json").is_file()
    import shutil

    shutil.rmtree(folder)  # the run dir is self-contained
    p = luban.load(run)
    f = stripes_run["test"] / "horizontal" / "h000.png"
    before = m["test"]["accuracy"]
    assert p.predict_file(f)[0]["label"] in ("horizontal", "vertical")
    assert p.evaluate(stripes_run["test"])["accuracy"] == pytest.approx(before, abs=1e-9)
