"""Compression benchmark on SST-2: fine-tune MiniLM (as benchmarks/text_classification.py), export, compress.

    python benchmarks/compression.py --data ../shared/data/sst2

1. the teacher: examples/sst2_minilm.yaml on the first 10k training rows (backbone starter-minilm);
2. `luban export` to ONNX (+ model/hf/ in save_pretrained layout); fp32 accuracy measured in PyTorch fp32;
3. `luban compress --quantize int8-dynamic` (per-channel): accuracy, size ratio, throughput at batch 32 through
   `luban.load(run).predict`, end to end (tokenization included);
4. the reference: transformers `pipeline("text-classification")` on the same fine-tuned model (model/hf/, fp32),
   batch 32, the same 872 test sentences, in this process, with the same threads;
5. `luban compress --prune 0.5` (global unstructured magnitude pruning, two fine-tune epochs);
6. a TextCNN student (examples/sst2_student_textcnn.yaml) from scratch, and the same student distilled from the
   teacher (`luban compress STUDENT --distill-from TEACHER --transfer-data FILE`): soft targets on the labelled
   rows plus 20k further training sentences the teacher scores (their labels are never read).

Every accuracy is on the 872-sentence test split. The last printed line is one JSON object.
"""

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import emit, peak_rss_mb, tsv_folder_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def hf_pipeline_throughput(hf_dir: Path, texts: list[str], labels: list[str], batch_size: int, repeats: int):
    """transformers pipeline("text-classification") on the exported fine-tuned model: rows/s and accuracy."""
    import torch
    from transformers import pipeline

    from luban.compress.bench import throughput

    # model/hf/ is luban's own export: its head (mean pooling) ships as modeling_luban.py, which transformers
    # runs only with trust_remote_code; the code is ours, written by the export a few lines above
    pipe = pipeline("text-classification", model=str(hf_dir), trust_remote_code=True, device=-1,
                    dtype=torch.float32)

    def predict(batch):
        return pipe(list(batch), batch_size=batch_size, truncation=True, max_length=64)

    with torch.inference_mode():
        rate = throughput(predict, texts, batch_size, repeats)
        preds = predict(texts)
    accuracy = sum(p["label"] == y for p, y in zip(preds, labels, strict=True)) / len(labels)
    return rate, accuracy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="folder with train.tsv, dev.tsv, test.tsv (SST-2 layout)")
    ap.add_argument("--backbone", default="starter-minilm")
    ap.add_argument("--train-limit", type=int, default=10000)
    ap.add_argument("--student-config", default=str(ROOT / "examples" / "sst2_student_textcnn.yaml"))
    ap.add_argument("--temperature", type=float, default=2.0)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--prune", type=float, default=0.5)
    ap.add_argument("--prune-epochs", type=int, default=2, help="fine-tune epochs after pruning")
    ap.add_argument("--transfer-rows", type=int, default=20000,
                    help="distillation transfer set: this many unlabeled training sentences after the first "
                    "--train-limit rows (their labels are never read); 0: distill on the labelled rows only")
    ap.add_argument("--repeats", type=int, default=2, help="throughput: best of this many passes (both sides)")
    ap.add_argument("--out", default=None, help="runs folder (default: a temporary one)")
    ap.add_argument("--teacher", default=None, help="reuse this fine-tuned run (same config) instead of training one")
    ap.add_argument("--set", action="append", default=[], help="extra overrides for the teacher and student")
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import luban
    from luban.compress.bench import benchmark, throughput
    from luban.compress.distill import distill_run
    from luban.compress.export import export_run
    from luban.compress.prune import prune_run
    from luban.compress.quantize import quantize_run
    from luban.compress.runs import run_metrics

    data = Path(a.data)
    test = data / "test.tsv"
    out_dir = a.out or tempfile.mkdtemp(prefix="luban-compress-")
    common = tsv_folder_overrides(data) + [f"data.train_limit={a.train_limit}", f"output.dir={out_dir}",
                                           "output.tensorboard=false", "output.overwrite=true"] + a.set
    t0 = time.perf_counter()
    if a.teacher:
        teacher = Path(a.teacher)
    else:
        teacher = luban.train(str(ROOT / "examples" / "sst2_minilm.yaml"),
                              common + ["output.name=teacher", f"model.path={a.backbone}"], quiet=True)
    export_run(teacher, "onnx")
    fp32_accuracy = luban.load(teacher, backend="torch").evaluate(test)["accuracy"]

    int8 = quantize_run(teacher, "int8-dynamic")
    pruned = prune_run(teacher, a.prune, finetune_epochs=a.prune_epochs)
    scratch = luban.train(a.student_config, common + ["output.name=student_scratch"], quiet=True)
    transfer = None
    if a.transfer_rows:
        with open(data / "train.tsv", encoding="utf-8") as f:
            train_rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
        extra = [r["sentence"].strip() for r in train_rows[a.train_limit:a.train_limit + a.transfer_rows]]
        transfer = Path(out_dir) / "transfer.tsv"
        transfer.write_text("sentence\n" + "".join(t + "\n" for t in extra if t), encoding="utf-8")
    distilled = distill_run(scratch, teacher, temperature=a.temperature, alpha=a.alpha, name="student_distilled",
                            overwrite=True, transfer_data=transfer)

    with open(test, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    texts, labels = [r["sentence"] for r in rows], [r["label"] for r in rows]
    int8_predictor = luban.load(int8)
    int8_throughput = throughput(int8_predictor.predict, texts, 32, a.repeats)
    hf_throughput, hf_accuracy = hf_pipeline_throughput(teacher / "model" / "hf", texts, labels, 32, a.repeats)

    table = benchmark([teacher, teacher, int8, pruned, scratch, distilled], test, latency_rows=200,
                      backends=["torch", "onnx", "auto", "auto", "auto", "auto"])
    acc = {Path(r["run"]).name + ":" + r["backend"]: r["score"] for r in table}
    size_ratio = (int8 / "model" / "onnx" / "model.onnx").stat().st_size / \
        (teacher / "model" / "model.safetensors").stat().st_size
    teacher_m = run_metrics(teacher)
    print(json.dumps({"benchmark_table": table}, ensure_ascii=False))
    emit({"dataset": data.name, "fp32_accuracy": round(fp32_accuracy, 4),
          "int8_accuracy": round(acc[f"{int8.name}:onnx"], 4),
          "int8_throughput": round(int8_throughput, 1), "hf_pipeline_throughput": round(hf_throughput, 1),
          "throughput_ratio": round(int8_throughput / hf_throughput, 2), "hf_pipeline_accuracy": round(hf_accuracy, 4),
          "size_ratio": round(size_ratio, 4),
          "pruned50_accuracy": round(acc[f"{pruned.name}:torch"], 4),
          "pruned50_sparsity": run_metrics(pruned)["compression"]["sparsity"]["prunable_sparsity"],
          "transfer_rows": run_metrics(distilled)["compression"]["transfer_rows"],
          "distilled_student_accuracy": round(acc[f"{distilled.name}:torch"], 4),
          "scratch_student_accuracy": round(acc[f"{scratch.name}:torch"], 4),
          "teacher_train_seconds": round(teacher_m["timings"]["train_seconds"], 1),
          "total_seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": peak_rss_mb(),
          "threads": table[0]["threads"]})


if __name__ == "__main__":
    main()
