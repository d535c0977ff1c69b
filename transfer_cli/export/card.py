"""The model card (README.md of an export folder), written from what the run recorded: task and
classes, data sizes per split, the report's metrics and transfer gain, the lineage, the sha256 of
every exported file, the round-trip check and how to load the model."""

from __future__ import annotations

from typing import Any

from transfer_cli.report.gains import gain_line
from transfer_cli.report.headline import headline_table

LOADING = {
    "onnx": """import numpy as np, onnxruntime as ort
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
x = np.zeros({shape}, dtype=np.{dtype})          # a batch, preprocessed as preprocess.json says
logits = session.run(["logits"], {{"x": x}})[0]   # any batch size""",
    "torchscript": """import torch
model = torch.jit.load("model.pt", map_location="cpu").eval()
x = torch.zeros({shape}, dtype=torch.{dtype})    # a batch, preprocessed as preprocess.json says
with torch.no_grad():
    logits = model(x)""",
    "safetensors": """import json, torch
from safetensors.torch import load_file
from transfer_cli.models import MODELS           # pip install transfer-cli: the architecture's code
arch = json.load(open("model.json"))
model = MODELS.build(arch["name"], arch["params"], input_shape=tuple(arch["input_shape"]), num_outputs=arch["num_outputs"])
model.load_state_dict(load_file("model.safetensors")); model.eval()""",
    "hf": """from transformers import AutoModelForSequenceClassification, AutoTokenizer
model = AutoModelForSequenceClassification.from_pretrained(".").eval()
tokenizer = AutoTokenizer.from_pretrained(".")
batch = tokenizer(["some text"], padding="max_length", truncation=True, max_length={max_length}, return_tensors="pt")
label = model.config.id2label[int(model(**batch).logits.argmax(-1))]""",
}


def model_card(facts: dict[str, Any], report: dict[str, Any], run_info: dict[str, Any], spec: dict[str, Any]) -> str:
    lines = [f"# {report.get('name') or facts['run']}: {facts['format']} export", ""]
    lines += _summary(facts, run_info, spec) + [""]
    lines += ["## Metrics", "", _metrics_note(facts, report), "", headline_table(report).markdown(), ""]
    lines += _gains(report)
    lines += ["## Lineage", ""] + _lineage(facts, run_info) + [""]
    lines += ["## Files", "", "| file | sha256 |", "|:---|:---|"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in facts["sha256"].items()] + [""]
    check = facts["check"]
    lines += ["## Round-trip check", "",
              f"{check['runtime']} against the PyTorch model on {check['samples']} samples of the run's "
              f"{facts['check_split']} split: max abs difference of the outputs {check['max_abs_diff']:.3g} "
              f"(tolerance {check['tolerance']:g}).", ""]
    lines += ["## Loading", "", "```python", _loading(facts, spec), "```", "",
              "`preprocess.json` says what to apply to raw inputs first (classes in output order, sizes, "
              "mean/std, the tokenizer) and how to read the outputs (`output.activation`, `output.threshold`).", ""]
    return "\n".join(lines)


def _summary(facts: dict, run_info: dict, spec: dict) -> list[str]:
    data = run_info.get("data") or {}
    sizes = ", ".join(f"{split} {n}" for split, n in (data.get("sizes") or {}).items())
    classes = spec.get("class_names")
    shown = ", ".join(classes) if classes else "-"
    return [f"- Task: {spec['task']}, {spec['num_outputs']} outputs; classes in output order: {shown}",
            f"- Input: {spec['input']['kind']}, shape (N, {', '.join(map(str, spec['input']['shape'][1:]))}) "
            f"({spec['input']['dtype']}, any batch size N); "
            f"data `{data.get('name')}`: {data.get('source', '')}",
            f"- Data sizes: {sizes}" + (f" ({data['per_class']} per class)" if data.get("per_class") else ""),
            f"- Model: `{(run_info.get('model') or {}).get('name')}`, "
            f"{(run_info.get('model') or {}).get('parameters', 0):,} parameters",
            f"- Weights: {facts['weights_kind']} checkpoint, step {facts['step']} (`{facts['weights']}`)"
            + ("; LoRA adapters merged into the weights" if facts.get("lora_merged") else "")]


def _metrics_note(facts: dict, report: dict) -> str:
    best = report.get("checkpoint") or {}
    note = f"From the run's report.json, measured on the {best.get('kind', 'best')} weights (step {best.get('step')})."
    if best.get("step") is not None and best.get("step") != facts["step"]:
        note += (f" This export holds step {facts['step']}, which the report did not evaluate: "
                 f"`transfer evaluate {facts['run']} --checkpoint {facts['ref']}` measures it.")
    return note


def _gains(report: dict) -> list[str]:
    gains = report.get("gains") or {}
    if gains:
        return ["## Did pretraining help?", ""] + [f"- {gain_line(report, k)}" for k in gains] + [""]
    if report.get("transfer_gain"):
        shown = ", ".join(f"{k} {v:+.4f}" for k, v in report["transfer_gain"].items())
        return ["## Did pretraining help?", "", f"- transfer gain (finetuned - scratch) on "
                                                f"{report.get('eval_split')}: {shown}", ""]
    return []


def _lineage(facts: dict, run_info: dict) -> list[str]:
    lineage = run_info.get("lineage") or {}
    chain = [f"- This run: `{facts['run']}` ({run_info.get('stage')}, seed {run_info.get('seed')}, "
             f"git {run_info.get('git_commit') or 'unknown'})"]
    if lineage.get("init_from"):
        source = facts.get("source_stage")
        chain.append(f"- Started from: `{lineage['init_from']}`" + (f" ({source} run)" if source else "")
                     + f", weights `{lineage.get('weights')}` (sha256 {lineage.get('sha256')})")
    if lineage.get("pretrained"):
        chain.append(f"- Pretrained encoder: `{lineage['pretrained']}` (sha256 {lineage.get('sha256')})")
    if len(chain) == 1:
        chain.append("- Trained from random initialisation")
    return chain


def _loading(facts: dict, spec: dict) -> str:
    shape = tuple([2] + spec["input"]["shape"][1:])
    text = spec.get("text") or {}
    return LOADING[facts["format"]].format(shape=shape, dtype=spec["input"]["dtype"],
                                           max_length=text.get("max_length"))
