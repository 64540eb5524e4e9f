"""The documentation site builds with --strict (no broken link, anchor or API reference), and what it shows is there."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def _roles_module():
    spec = importlib.util.spec_from_file_location("griffe_sphinx_roles", REPO / "tools" / "griffe_sphinx_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(nav: list) -> list[str]:
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.mark.parametrize(("text", "module", "want"), [
    (":func:`~lesionlab.runs.load_run`", "x", '<autoref identifier="lesionlab.runs.load_run" optional>'
                                              '<code>load_run</code></autoref>'),
    (":class:`lesionlab.data.DataSource`", "x", '<autoref identifier="lesionlab.data.DataSource" optional>'
                                                '<code>lesionlab.data.DataSource</code></autoref>'),
    ("see :func:`fit` here", "lesionlab.train.engine", 'see <autoref identifier="lesionlab.train.engine.fit" optional>'
                                                       '<code>fit</code></autoref> here'),
    ("``plain`` code and :meth:`Run.predict_proba()`", "lesionlab.runs",
     '``plain`` code and <autoref identifier="Run.predict_proba" optional><code>Run.predict_proba</code></autoref>'),
])
def test_sphinx_roles_become_optional_links(text: str, module: str, want: str) -> None:
    assert _roles_module().convert(text, module) == want


def test_every_page_is_in_the_nav_and_the_shared_documents_keep_their_paths() -> None:
    cfg = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    pages = _nav_pages(cfg["nav"])
    on_disk = sorted(str(p.relative_to(REPO / "docs")) for p in (REPO / "docs").rglob("*.md"))
    assert sorted(pages) == on_disk
    assert "ARCHITECTURE.md" in pages and "BENCHMARKS.md" in pages  # docs/ARCHITECTURE.md, docs/BENCHMARKS.md


def test_readme_and_site_show_committed_screenshots() -> None:
    readme = (REPO / "README.md").read_text()
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", readme)
    assert shown, "the README shows a screenshot"
    for path in shown:
        assert (REPO / path).is_file(), path
    for name in ("clinician-page.png", "evaluation-report.png"):
        assert (REPO / "docs" / "images" / name).stat().st_size > 10_000


@pytest.mark.slow
def test_site_builds_strict(tmp_path: Path) -> None:
    if not MKDOCS.exists():
        pytest.skip(f"{MKDOCS} not found: install the docs extra (pip install -e '.[dev]')")
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    out = subprocess.run([str(MKDOCS), "build", "--strict", "--site-dir", str(site)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, (out.stdout + out.stderr)[-4000:]
    for page in ("index.html", "getting-started/index.html", "guides/data/index.html", "BENCHMARKS/index.html",
                 "ARCHITECTURE/index.html", "reference/api/runs/index.html", "reference/configuration/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference/api/runs/index.html").read_text()
    assert 'id="lesionlab.runs.load_run"' in api  # generated from the docstrings
    assert ":func:" not in api and "<autoref" not in api  # roles rewritten and resolved
    assert (site / "images" / "clinician-page.png").is_file()
    shutil.rmtree(site)
