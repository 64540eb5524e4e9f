"""Remake the documentation's screenshots from the synthetic demo data: ``make screenshots``.

1. ``lesionlab demo`` on the built-in SYNTHETIC set (no dataset image is ever committed): a calibrated run, its
   evaluation and its HTML report;
2. that run served in this process, its clinician page opened in Debian's headless chromium through Playwright, a
   synthetic lesion uploaded with age, sex and site: the prediction, Grad-CAM heatmap and referral state;
3. the top of the evaluation report.

Writes ``clinician-page.png`` and ``evaluation-report.png`` to ``--out`` (default ``docs/images``), which the README
and the documentation site show. Extra ``key=value`` arguments override the demo's config (the tests use a smaller,
faster set).

    .venv/bin/python tools/screenshots.py [--out docs/images] [--work DIR] [key=value ...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--font-render-hinting=none"]
PAGE_VIEWPORT = {"width": 1280, "height": 860}
REPORT_VIEWPORT = {"width": 1100, "height": 900}
FILES = ("clinician-page.png", "evaluation-report.png")
#: The synthetic demo with the patient's age, sex and site fused, as the real-data preset does, so the page shows a
#: model that uses the form's clinical fields.
DEMO_OVERRIDES = ("model.fusion=concat",)


class ScreenshotError(RuntimeError):
    """Something the screenshots need is missing (chromium, the demo's outputs)."""


def synthetic_demo(work: Path, overrides: list[str]) -> dict[str, Any]:
    """Run the demo on the synthetic set into ``work`` (its own cache folder) and return its summary."""
    from lesionlab.config import load_config
    from lesionlab.demo import SYNTHETIC_PRESET, run_demo

    cfg = load_config(REPO / SYNTHETIC_PRESET, ["data.source=synthetic", f"data.cache_dir={work / 'cache'}",
                                                *DEMO_OVERRIDES, *overrides])
    return run_demo(cfg, work / "demo", progress=False)


def shoot_page(browser: Any, base: str, image: Path, out: Path) -> None:
    """The clinician page after one upload: probabilities, heatmap over the image, referral state."""
    page = browser.new_page(viewport=PAGE_VIEWPORT, device_scale_factor=1)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#site option').length > 10")
    page.get_by_test_id("file").set_input_files(str(image))
    page.get_by_test_id("age").fill("62")
    page.get_by_test_id("sex").select_option("male")
    page.get_by_test_id("site").select_option("back")
    page.get_by_test_id("submit").click()
    page.get_by_test_id("result").wait_for(state="visible", timeout=120_000)
    page.get_by_test_id("heatmap").wait_for(state="visible", timeout=120_000)
    page.wait_for_function("document.getElementById('heatmap').complete")
    if errors:
        raise ScreenshotError(f"the clinician page raised: {errors[0]}")
    page.screenshot(path=str(out), full_page=True)
    page.close()


def shoot_report(browser: Any, report: Path, out: Path) -> None:
    """The evaluation report's figures: confusion matrix, ROC and precision-recall curves, reliability."""
    page = browser.new_page(viewport=REPORT_VIEWPORT, device_scale_factor=1)
    page.goto(report.resolve().as_uri())
    page.wait_for_load_state("load")
    page.evaluate("window.scrollTo(0, document.getElementById('figures').getBoundingClientRect().top + window.scrollY"
                  " - 8)")
    page.screenshot(path=str(out), full_page=False)
    page.close()


def demo_test_image(run: Any) -> Any:
    """An image of the synthetic set's test split (a melanoma if one qualifies), enlarged for the page, that the
    demo run assesses with the page's age, sex and site: the screenshot shows a prediction with its heatmap. An image
    of another kind would rightly be "cannot assess" for this run."""
    from PIL import Image

    from lesionlab.data.sources import open_source
    from lesionlab.serve.service import Patient, Predictor, Timer
    from lesionlab.serve.settings import ServeSettings

    source = open_source(run.config.data)
    table = source.table
    test = (table["split"] == "test").to_numpy()
    mel = (table["dx"] == "mel").to_numpy()
    order = [*(test & mel).nonzero()[0], *(test & ~mel).nonzero()[0]]
    predictor = Predictor(run, ServeSettings(allow_synthetic=True, warmup=False))
    patient = Patient(age=62.0, sex="male", site="back")
    for i in order[:200]:
        image = source.load_image(int(i)).convert("RGB").resize((448, 448), Image.Resampling.BICUBIC)
        answer = predictor.predict([image], [patient], ["lesion.jpg"], Timer())[0]
        if answer["assessment"]["status"] == "assessed":
            return image
    raise ScreenshotError("the demo run assesses none of the first 200 test images (all uncertain or out of scope)")


def make_screenshots(out: Path, work: Path, overrides: list[str]) -> list[Path]:
    """Demo, serve, shoot; returns the written files."""
    if not CHROMIUM.exists():
        raise ScreenshotError(f"{CHROMIUM} not found: install Debian's chromium (make browser)")
    from playwright.sync_api import sync_playwright

    from lesionlab.runs import load_run
    from lesionlab.serve.app import create_app
    from lesionlab.serve.bench import serve_in_thread
    from lesionlab.serve.settings import ServeSettings

    summary = synthetic_demo(work, overrides)
    if not summary["synthetic"]:
        raise ScreenshotError("the demo did not use the synthetic set; refusing to photograph dataset images")
    image = work / "lesion.jpg"
    demo_test_image(load_run(summary["run_dir"])).save(image, quality=92)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # a run trained on the synthetic set: served only when allowed, and the page shows the warning
            app = create_app(load_run(summary["run_dir"]), ServeSettings(allow_synthetic=True))
            with serve_in_thread(app, startup_timeout=60) as base:
                shoot_page(browser, base, image, paths[0])
            shoot_report(browser, Path(summary["report"]), paths[1])
        finally:
            browser.close()
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the synthetic demo's config")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--work", type=Path, help="working folder for the demo (default: a temporary one)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lesionlab-shots-")))
        try:
            paths = make_screenshots(args.out, work, args.overrides)
        except ScreenshotError as err:
            print(f"screenshots: error: {err}", file=sys.stderr)
            return 1
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
