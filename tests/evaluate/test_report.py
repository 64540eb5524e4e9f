"""Run and grid reports: content, self-containment, Markdown twin, CLI, and a headless-Chromium check."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from lesionlab.cli import main
from lesionlab.evaluate import grid_report as G
from lesionlab.evaluate import report as R
from lesionlab.evaluate.stats import compare_groups

RUN_FIGURES = ["fig-confusion", "fig-roc", "fig-pr", "fig-reliability", "fig-sens-spec"]
RUN_TABLES = ["table-metrics", "table-per-class", "table-confusion", "table-referral", "table-runtime"]
CHROMIUM = Path("/usr/bin/chromium")


def test_run_report_sections_and_self_contained(make_eval_dir: Callable[..., Path]) -> None:
    paths = R.render_run_report(make_eval_dir())
    html = paths["html"].read_text()
    for testid in [*RUN_FIGURES, *RUN_TABLES, "model-card"]:
        assert f'data-testid="{testid}"' in html, testid
    assert html.count('src="data:image/png;base64,') == len(RUN_FIGURES)
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from the network
    assert "<script" not in html
    for text in ("CC BY-NC 4.0", "not a diagnostic device", "Fitzpatrick", "Dermoscopy only", "Seven classes",
                 "hash 0123abcd", "PASS: no lesion in two splits", "95% CI"):
        assert text in html, text
    md = paths["markdown"].read_text()
    for title in ("### Metrics", "### Per-class metrics", "### Confusion matrix", "### Malignancy triage",
                  "### Runtime", "## Model card", "CC BY-NC 4.0"):
        assert title in md, title
    doc = json.loads((paths["html"].parent / "metrics.json").read_text())
    assert f"| Accuracy | {doc['accuracy']:.3f} | {doc['ci']['accuracy']['low']:.3f} – " in md
    mel = doc["referral"]["by_class"]["mel"]
    assert f"| mel referred (this split) | {mel['referred']} of {mel['n']} ({mel['rate']:.3f}) |" in md


def test_absent_class_shown_as_undefined(make_eval_dir: Callable[..., Path]) -> None:
    paths = R.render_run_report(make_eval_dir(absent=(3,)))
    html = paths["html"].read_text()
    assert "Classes absent from this split: df" in html
    md = paths["markdown"].read_text()
    df_row = next(line for line in md.splitlines() if line.startswith("| df |"))
    assert df_row.startswith("| df | 0 |") and "n/a" in df_row and "0.000 | n/a" not in df_row.split("|")[4]
    assert "per_class.df.tpr (class df absent from y_true)" in md


def test_synthetic_data_warning_and_licence(make_eval_dir: Callable[..., Path]) -> None:
    html = R.render_run_report(make_eval_dir(synthetic=True))["html"].read_text()
    assert "SYNTHETIC images" in html and "no third-party licence" in html


def test_cli_report_prints_html_path(make_eval_dir: Callable[..., Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    eval_dir = make_eval_dir("eval-test")
    run_dir = eval_dir.parent  # a run directory holding eval-test/
    assert main(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == str(tmp_path / "out" / "report.html") and Path(printed).is_file()


def test_report_errors(tmp_path: Path, make_eval_dir: Callable[..., Path], capsys: pytest.CaptureFixture[str]
                       ) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 1
    assert "no metrics.json here or in an eval*/ subdirectory" in capsys.readouterr().err
    bad = make_eval_dir("eval-bad")
    (bad / "metrics.json").write_text("{not json")
    with pytest.raises(R.ReportError, match=r"metrics.json: not valid JSON"):
        R.render_run_report(bad)
    trimmed = make_eval_dir("eval-trimmed")
    frame = pd.read_csv(trimmed / "predictions.csv")
    frame.iloc[:-5].to_csv(trimmed / "predictions.csv", index=False)
    with pytest.raises(R.ReportError, match="metrics describe 300 images but the predictions table has 295"):
        R.render_run_report(trimmed)


def _grid_rows() -> pd.DataFrame:
    rows = []
    for model, base in (("tf_efficientnet_lite0", 0.62), ("mobilenetv2_100", 0.55)):
        for size, bump in (("64", 0.0), ("224", 0.08)):
            for seed in range(3):
                rows.append({"run_id": f"{model}-{size}-s{seed}", "model": model, "image_size": size, "seed": seed,
                             "accuracy": base + bump + 0.01 * seed + 0.1,
                             "balanced_accuracy": base + bump + 0.01 * seed})
    return pd.DataFrame(rows)


def test_grid_report(tmp_path: Path) -> None:
    rows = _grid_rows()
    tests = compare_groups(rows, "balanced_accuracy", by="image_size", within=["model"])
    extra = {"balanced_accuracy (models x size)": pd.DataFrame({"64": ["0.63 ± 0.01"], "224": ["0.71 ± 0.01"]},
                                                                 index=pd.Index(["tf_efficientnet_lite0"],
                                                                                name="model"))}
    paths = G.render_grid_report(rows, tests, tmp_path, title="size study", tables=extra,
                                 notes=["toy numbers"])
    html = paths["html"].read_text()
    for testid in ("table-summary", "table-tests", "table-runs", "table-extra-0", "fig-grid-accuracy",
                   "fig-grid-balanced_accuracy"):
        assert f'data-testid="{testid}"' in html, testid
    md = paths["markdown"].read_text()
    assert "| tf_efficientnet_lite0 | 224 | 0.810 ± 0.010 (n=3) | 0.710 ± 0.010 (n=3) |" in md
    assert "Mann-Whitney U" in md and "224=3, 64=3" in md and "rank-biserial r = 1.000" in md
    assert "p (Holm)" in md and "toy numbers" in md
    with pytest.raises(R.ReportError, match="no runs"):
        G.grid_report(rows.iloc[:0], [])
    with pytest.raises(R.ReportError, match="none of the metrics"):
        G.grid_report(rows, [], metrics=["macro_auc"])


@pytest.mark.browser
@pytest.mark.slow
def test_report_in_headless_chromium(make_eval_dir: Callable[..., Path], tmp_path: Path) -> None:
    """Open the report in Debian's chromium: every figure decodes, every table has rows, the card is there."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (`make browser`) to run the browser test")
    from playwright.sync_api import sync_playwright

    html_path = R.render_run_report(make_eval_dir(absent=(3,)))["html"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_path.as_uri())
            page.wait_for_load_state("load")
            for fig in RUN_FIGURES:
                img = page.locator(f'[data-testid="{fig}"] img')
                assert img.count() == 1, fig
                size = img.evaluate("el => [el.complete, el.naturalWidth, el.naturalHeight]")
                assert size[0] and size[1] > 100 and size[2] > 100, (fig, size)
            for table in RUN_TABLES:
                assert page.locator(f'[data-testid="{table}"] tbody tr').count() > 0, table
            assert page.locator('[data-testid="table-per-class"] tbody tr').count() == 7
            assert "CC BY-NC 4.0" in page.locator('[data-testid="model-card"]').inner_text()
            assert page.locator('[data-testid="warning"]').count() == 1
            assert all(u.startswith(("file:", "data:")) for u in requests), requests
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "report.png").stat().st_size > 50_000


def test_cli_report_of_a_grid_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _grid_rows().assign(n=908, ece_bins=15, **{"per_class.mel.tpr": 0.5})
    tests = compare_groups(rows, "balanced_accuracy", by="image_size", within=["model"])
    grid = tmp_path / "grid"
    (grid / "tables").mkdir(parents=True)
    rows.to_csv(grid / "results.csv", index=False)
    (grid / "tests.json").write_text(json.dumps([t.to_dict() for t in tests]))
    pd.DataFrame({"64": ["0.63 ± 0.01"], "224": ["0.71 ± 0.01"]}, index=pd.Index(["lite0"], name="model")).to_csv(
        grid / "tables" / "00_balanced_accuracy.csv")
    assert main(["report", str(grid)]) == 0
    assert capsys.readouterr().out.strip() == str(grid / "report.html")
    md = (grid / "report.md").read_text()
    assert "| model | image_size | accuracy | balanced_accuracy |" in md  # n and ece_bins are not conditions
    assert "### balanced accuracy" in md and "| lite0 | 0.63 ± 0.01 | 0.71 ± 0.01 |" in md
    assert md.count("| Mann-Whitney U |") == 2
    (grid / "tests.json").write_text('[{"test": "x"}]')
    with pytest.raises(R.ReportError, match=r"tests\.json: cannot read saved tests"):
        G.render_grid_dir(grid)
