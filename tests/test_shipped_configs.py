"""Every config under configs/ is valid, and the stages that chain point at each other's runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from transfer_cli.config.loader import load_raw
from transfer_cli.config.validate import validate
from transfer_cli.recipes.components import registries

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if not p.name.startswith("base"))


def test_there_are_configs() -> None:
    assert len(CONFIGS) >= 3


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "configs")))
def test_config_is_valid(path: Path) -> None:
    exp = validate(load_raw(path), registries())
    assert exp.data.name


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
