"""``make screenshots`` (tools/screenshots.py) runs: synthetic demo, clinician page and report photographed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def test_screenshot_script_photographs_the_page_and_the_report(tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser) to run the browser tests")
    from PIL import Image

    env = {**os.environ, "LESIONLAB_SHARED": str(tmp_path / "absent"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(REPO / "tools" / "screenshots.py"), "--out", str(tmp_path / "shots"),
                          "--work", str(tmp_path / "work"), "train.epochs=3", "data.synthetic_n=140"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    page, report = tmp_path / "shots" / "clinician-page.png", tmp_path / "shots" / "evaluation-report.png"
    for path in (page, report):
        assert f"wrote {path}" in out.stdout
    with Image.open(page) as img:
        assert img.width == 1280 and img.height >= 860
        assert len(img.convert("RGB").resize((64, 64)).getcolors(4096) or []) > 50  # a rendered page, not blank
    with Image.open(report) as img:
        assert img.size == (1100, 900)
