"""Every config under configs/ is valid, and the stages that chain point at each other's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer_cli.config.loader import load_raw
from transfer_cli.config.validate import validate
from transfer_cli.recipes.components import registries

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("base") and p not in SWEEPS)


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_is_valid(path: Path) -> None:
    exp = validate(load_raw(path), registries())
    assert exp.data.name


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_shipped_sweep_is_valid_with_every_value_on_its_base(path: Path) -> None:
    """Each swept value on the base config passes the config's validation (the check a sweep makes
    before it starts, less the run its base starts from, which a test does not have)."""
    from transfer_cli.sweep.schema import read_sweep
    from transfer_cli.sweep.space import candidates, direction, trial_layers

    sweep = read_sweep(path)
    assert direction(sweep) in ("maximize", "minimize")
    for key, dim in sweep.config.space.items():
        for value in candidates(dim):
            raw = load_raw(sweep.base)
            for layer in trial_layers(sweep, {key: value}):
                raw = raw.merged(layer)
            validate(raw, registries())


def test_chained_configs_start_from_runs_that_shipped_configs_make() -> None:
    made = set()
    starts = []
    for path in CONFIGS:
        raw = load_raw(path).data
        if raw.get("run_dir"):
            made.add(raw["run_dir"])
        ref = (raw.get("transfer") or {}).get("init_from") or (raw.get("eval") or {}).get("checkpoint")
        if ref and not Path(ref).suffix:
            starts.append((path.name, ref.split("@")[0]))
    assert starts
    for name, ref in starts:
        assert ref in made, f"{name} starts from {ref}, which no shipped config writes"
