"""The torchvision compatibility shim: imports work, and the shim only acts when the extension cannot load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lesionlab import _compat


def test_torchvision_and_timm_import_after_lesionlab() -> None:
    code = ("import lesionlab, torchvision, timm; from torchvision.transforms import v2; "
            "print(torchvision.__version__, timm.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_extension_probe_is_false_without_a_loadable_library(tmp_path: Path) -> None:
    assert _compat._extension_loads(str(tmp_path)) is False  # no _C library at all
    (tmp_path / "_C.so").write_bytes(b"not a shared object")
    assert _compat._extension_loads(str(tmp_path)) is False


def test_noop_once_torchvision_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision  # noqa: F401

    monkeypatch.setattr(_compat, "patched", False)
    monkeypatch.setattr(_compat, "_extension_loads", lambda _d: pytest.fail("must not probe again"))
    _compat.ensure_torchvision_importable()
    assert _compat.patched is False


def test_hub_timeouts_respect_user_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "30")
    monkeypatch.delenv("HF_HUB_DOWNLOAD_TIMEOUT", raising=False)
    _compat.configure_hub_offline_default()
    import os

    assert os.environ["HF_HUB_ETAG_TIMEOUT"] == "30"
    assert os.environ["HF_HUB_DOWNLOAD_TIMEOUT"] == "5"


@pytest.mark.slow
def test_install_pulls_no_cuda_packages_or_newer_torch() -> None:
    """Resolve the project's dependencies from scratch (no install) and check what pip would take."""
    import json

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                          "--report", "-", str(repo)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0 and ("Could not find" in out.stderr or "No matching distribution" in out.stderr):
        pytest.skip(f"package index unreachable: {out.stderr.strip().splitlines()[-1]}")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)["install"]
    names = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report}
    assert names.get("torch", "").startswith("2.13.0"), names.get("torch")
    cuda = sorted(n for n in names if n.startswith(("nvidia-", "cuda", "triton")))
    assert not cuda, f"CUDA packages would be installed: {cuda}"
