"""LoRA on our architectures: only adapter parameters are added, trained adapters merge exactly
into a plain model of the same architecture, dropout is off in eval, and targets fail clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from transfer_cli.core.errors import ConfigError
from transfer_cli.models import MODELS
from transfer_cli.models.lora import add_lora, lora_parameter_names, merge_lora, merged_state_dict

ARCHITECTURES = {  # name: (params, input shape, adapted module types)
    "mlp": ({"hidden": [16, 16], "norm": "batch"}, (1, 24), nn.Linear),
    "cnn1d": ({"channels": [4, 8], "kernel_size": 5}, (2, 32), nn.Conv1d),
    "resnet": ({"widths": [4, 8]}, (3, 12, 12), nn.Conv2d),
}


def _build(arch: str, seed: int = 0) -> nn.Module:
    params, shape, _ = ARCHITECTURES[arch]
    torch.manual_seed(seed)
    return MODELS.build(arch, params, input_shape=shape, num_outputs=3)


def _train_adapters(model: nn.Module, x: torch.Tensor, steps: int = 5) -> None:
    """A few steps on the adapters only (as the lora strategy trains them), so B != 0."""
    names = set(lora_parameter_names(model))
    params = [p for n, p in model.named_parameters() if n in names]
    optimizer = torch.optim.Adam(params, lr=0.05)
    target = torch.randint(0, 3, (len(x),), generator=torch.Generator().manual_seed(1))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        optimizer.step()
    model.eval()


def _inputs(arch: str, n: int = 8) -> torch.Tensor:
    return torch.randn(n, *ARCHITECTURES[arch][1], generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_trained_adapters_merge_into_the_plain_architecture(arch: str) -> None:
    model, x = _build(arch), _inputs(arch)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()
    plain_out = model(x)

    adapted = add_lora(model, rank=2, alpha=4.0, dropout=0.0, targets=["*"])
    kind = ARCHITECTURES[arch][2]
    expected = [n for n, m in model.named_modules() if isinstance(m, kind) and not n.startswith("head")]
    assert adapted == expected and adapted
    assert torch.equal(model(x), plain_out)  # B starts at zero: nothing changes until training
    added = set(dict(model.named_parameters())) - set(before)
    assert added == set(lora_parameter_names(model)) == {f"{n}.{p}" for n in adapted for p in ("lora_A", "lora_B")}
    assert set(before) <= set(dict(model.named_parameters()))  # original names unchanged

    _train_adapters(model, x)
    assert all(model.get_submodule(n).lora_B.abs().max() > 0 for n in adapted)
    for name, param in model.named_parameters():
        if name in before:
            assert torch.equal(param, before[name]), name  # only adapters trained
    adapter_out = model(x)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}

    merged = merged_state_dict(model)
    assert not any("lora_" in k for k in merged)
    plain = _build(arch, seed=1)
    plain.load_state_dict(merged, strict=True)
    plain.eval()
    assert torch.allclose(plain(x), adapter_out, atol=1e-5, rtol=1e-4)
    unmerged = _build(arch, seed=1)
    unmerged.load_state_dict({k: v for k, v in state_before.items() if "lora_" not in k}, strict=True)
    assert (unmerged.eval()(x) - adapter_out).abs().max() > 1e-3  # the adapters do change the output
    assert all(torch.equal(v, state_before[k]) for k, v in model.state_dict().items())  # model untouched

    merge_lora(model)
    assert lora_parameter_names(model) == [] and set(model.state_dict()) == set(plain.state_dict())
    assert torch.allclose(model(x), adapter_out, atol=1e-5, rtol=1e-4)


def test_conv_options_and_targets_are_respected() -> None:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("c2", nn.Conv2d(3, 5, 3, stride=2, padding=2, dilation=2, padding_mode="reflect"))
    model.add_module("c1", nn.Conv1d(3, 4, 3, padding=1, padding_mode="circular"))
    model.add_module("fc", nn.Linear(6, 2))
    adapted = add_lora(model, rank=3, alpha=1.5, dropout=0.0, targets=["c*"])
    assert adapted == ["c2", "c1"] and not hasattr(model.fc, "lora_A")
    for module in (model.c2, model.c1):
        nn.init.normal_(module.lora_B)
    x2, x1 = torch.randn(2, 3, 9, 9), torch.randn(2, 3, 7)
    out2, out1 = model.c2(x2), model.c1(x1)
    merge_lora(model)
    assert torch.allclose(model.c2(x2), out2, atol=1e-5) and torch.allclose(model.c1(x1), out1, atol=1e-5)


def test_dropout_is_active_in_training_and_off_in_eval() -> None:
    model, x = _build("mlp"), _inputs("mlp")
    add_lora(model, rank=4, alpha=8.0, dropout=0.5, targets=["backbone.*"])
    _train_adapters(model, x)
    model.train()
    assert not torch.allclose(model(x), model(x))  # dropout on the adapter path
    model.eval()
    out = model(x)
    assert torch.equal(out, model(x))
    plain = _build("mlp", seed=1)
    plain.load_state_dict(merged_state_dict(model))
    assert torch.allclose(plain.eval()(x), out, atol=1e-5, rtol=1e-4)


def test_head_is_never_adapted_and_bad_targets_name_the_key() -> None:
    model = _build("cnn1d")
    with pytest.raises(ConfigError) as info:
        add_lora(model, rank=2, alpha=2.0, dropout=0.0, targets=["head", "block*"])
    message = str(info.value)
    assert "transfer.lora.targets: ['head', 'block*'] match no nn.Linear/Conv1d/Conv2d module" in message
    assert "backbone.block0.0, backbone.block1.0" in message  # what could be adapted
    assert lora_parameter_names(model) == []
    assert add_lora(model, rank=2, alpha=2.0, dropout=0.0, targets=["*block1*"]) == ["backbone.block1.0"]


def test_grouped_convs_are_skipped_with_a_reason() -> None:
    model = nn.Sequential(nn.Conv1d(4, 4, 3, groups=4), nn.Conv1d(4, 2, 1))
    with pytest.raises(ConfigError, match="0 match but are grouped convs"):
        add_lora(model, rank=2, alpha=2.0, dropout=0.0, targets=["0"])
    assert add_lora(model, rank=2, alpha=2.0, dropout=0.0, targets=["*"]) == ["1"]


def test_a_deep_copy_has_its_own_adapters() -> None:
    model, x = _build("mlp"), _inputs("mlp")
    add_lora(model, rank=2, alpha=2.0, dropout=0.0, targets=["*"])
    _train_adapters(model, x)
    out = model(x)
    twin = copy.deepcopy(model)
    for name in lora_parameter_names(twin):
        twin.get_parameter(name).data.zero_()
    merge_lora(twin)
    assert torch.equal(model(x), out)  # the original still uses its own (trained) adapters
    assert lora_parameter_names(twin) == [] and lora_parameter_names(model)
