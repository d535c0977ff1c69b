"""ONNX: torch's exporter (torch.export -> ONNX, which needs onnxscript) with a dynamic batch axis,
checked in onnxruntime. Needs the optional extra: pip install -e ".[export]"."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Iterator

import torch

from transfer_cli.core.errors import UsageError
from transfer_cli.export.check import max_abs_diff, round_trip

FILE = "model.onnx"
PACKAGES = ("onnx", "onnxruntime", "onnxscript")


def require_packages() -> None:
    """Before any work: the extra's packages, or one line saying how to install them."""
    import importlib.util

    missing = [name for name in PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise UsageError(f"--format onnx needs the optional packages {', '.join(missing)}: "
                         f"pip install -e \".[export]\" (or pip install onnx onnxruntime onnxscript)")


def export_onnx(model: torch.nn.Module, example: torch.Tensor, check: torch.Tensor, folder: Path) -> dict:
    """Write model.onnx (input `x`, output `logits`, batch axis dynamic) and check it on `check`
    (a batch of another size than `example`, so the dynamic axis is exercised)."""
    import onnxruntime

    path = folder / FILE
    with _quiet():
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["x"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
        program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    theirs = session.run(["logits"], {"x": check.numpy()})[0]
    with torch.no_grad():
        ours = model(check)
    facts = round_trip(f"onnxruntime {onnxruntime.__version__}", max_abs_diff(ours, theirs), len(check))
    return {"files": [FILE], "check": facts, "input": "x", "output": "logits", "dynamic_axes": {"x": [0], "logits": [0]},
            "opset": _opset(path)}


def _opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter reports its progress on stdout and warns through logging: keep our output ours."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
