"""Fixtures of the synthesis tests: a tiny config on the built-in SYNTHETIC set and one trained run to share."""

from __future__ import annotations

from pathlib import Path

import pytest

from lesionlab.synth.config import SynthConfig, load_synth_config

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "configs" / "synth" / "smoke.yaml"


def tiny_config(tmp: Path, *overrides: str) -> SynthConfig:
    """The smoke preset (16 px, built-in SYNTHETIC data) writing under ``tmp``."""
    return load_synth_config(SMOKE, [f"output_dir={tmp}", *overrides])


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished smoke run (read-only for tests)."""
    from lesionlab.synth.training import train_synth

    tmp = tmp_path_factory.mktemp("synth-run")
    return train_synth(tiny_config(tmp), run_dir=tmp / "run", progress=False)
