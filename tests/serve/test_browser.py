"""End to end in Debian's headless chromium: the clinician page uploads an image and shows bars, heatmap, referral.

Screenshots at desktop and phone width go to the test's temporary folder, or to ``$LESIONLAB_SCREENSHOTS`` when
set (to look at them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lesionlab.runs import load_run
from lesionlab.serve.app import create_app
from lesionlab.serve.samples import synthetic_lesion
from lesionlab.serve.settings import ServeSettings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (make browser) to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(meta_run: Path, serve_in_thread: Callable[..., Any]) -> Iterator[str]:
    with serve_in_thread(create_app(load_run(meta_run), ServeSettings())) as base:
        yield base


def _lesion_image(real_image_paths: list[Path], tmp_path: Path) -> Path:
    if real_image_paths:
        mel = [p for p in real_image_paths if "mel" in p.name.lower()]
        return (mel or real_image_paths)[0]
    path = tmp_path / "synthetic_lesion.jpg"
    synthetic_lesion((600, 450)).save(path, quality=92)
    return path


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("LESIONLAB_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.mark.parametrize(("name", "viewport"), [("desktop", {"width": 1280, "height": 900}),
                                                ("phone", {"width": 390, "height": 844})])
def test_upload_shows_bars_heatmap_referral_and_disclaimer(browser: Browser, server: str,
                                                           real_image_paths: list[Path], tmp_path: Path, name: str,
                                                           viewport: dict) -> None:
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server + "/")
    disclaimer = page.get_by_test_id("intended-use")
    assert disclaimer.is_visible() and "Intended use" in disclaimer.inner_text()  # before any script ran
    page.wait_for_function("document.querySelectorAll('#site option').length > 10")
    assert "not a diagnostic device" in disclaimer.inner_text()  # the model card's own wording
    assert "lower extremity" in page.locator("#site").inner_text()

    page.get_by_test_id("file").set_input_files(str(_lesion_image(real_image_paths, tmp_path)))
    page.get_by_test_id("age").fill("62")
    page.get_by_test_id("sex").select_option("male")
    page.get_by_test_id("site").select_option("back")
    page.get_by_test_id("submit").click()
    page.get_by_test_id("result").wait_for(state="visible", timeout=60_000)

    bars = page.locator("#bars li")
    assert bars.count() == 7
    widths = [float(b.locator(".fill").evaluate("e => e.getBoundingClientRect().width")) for b in bars.all()]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0
    heatmap = page.get_by_test_id("heatmap")
    heatmap.wait_for(state="visible")
    assert heatmap.evaluate("e => e.naturalWidth") > 0
    photo_box = page.locator("#photo").bounding_box()
    heat_box = heatmap.bounding_box()
    assert abs(photo_box["width"] - heat_box["width"]) < 2 and abs(photo_box["height"] - heat_box["height"]) < 2
    referral = page.get_by_test_id("referral").inner_text()
    assert "threshold 30.0%" in referral and "fitted on validation data" in referral
    assert disclaimer.is_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scrolling
    shots = _shots(tmp_path)
    page.screenshot(path=str(shots / f"serve-{name}.png"), full_page=True)

    page.get_by_test_id("overlay-toggle").uncheck()
    assert heatmap.is_hidden()
    page.get_by_test_id("overlay-toggle").check()
    assert heatmap.is_visible()
    assert errors == []
    page.close()


def test_bad_input_shows_the_services_message(browser: Browser, server: str, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 390, "height": 844})
    page.goto(server + "/")
    page.wait_for_function("document.querySelectorAll('#site option').length > 10")
    notes = tmp_path / "notes.jpg"
    notes.write_text("these are notes, not a picture")
    page.get_by_test_id("file").set_input_files(str(notes))
    page.get_by_test_id("submit").click()
    error = page.get_by_test_id("error")
    error.wait_for(state="visible")
    assert "notes.jpg" in error.inner_text() and "not a readable image" in error.inner_text()
    lesion = tmp_path / "lesion.jpg"
    synthetic_lesion((300, 225)).save(lesion)
    page.get_by_test_id("file").set_input_files(str(lesion))
    page.get_by_test_id("age").fill("150")
    page.get_by_test_id("submit").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('150')")
    assert "(field: age)" in error.inner_text()
    assert page.get_by_test_id("result").is_hidden()
    page.close()


def _background(png_bytes: bytes) -> tuple[int, int, int]:
    """The most common colour of a screenshot: an element's background."""
    import io

    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return tuple(int(v) for v in colours[counts.argmax()])


def _page_with_photo(browser: Browser, base: str, tmp_path: Path, viewport: dict) -> tuple[Any, list[str]]:
    """The clinician page, loaded, with a synthetic lesion chosen; and the list its script errors go to."""
    page = browser.new_page(viewport=viewport)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base + "/")
    page.wait_for_function("document.querySelectorAll('#site option').length > 10")
    photo = tmp_path / "photo.jpg"
    synthetic_lesion((600, 450), seed=3).save(photo, quality=92)
    page.get_by_test_id("file").set_input_files(str(photo))
    return page, errors


@pytest.mark.parametrize(("state", "threshold", "margin", "degradation", "box_colour", "text"), [
    ("cannot-assess", -1.0, 0.0, 1e12, (0xEC, 0xEF, 0xF1),
     "Cannot assess: this does not look like a dermoscopy image"),
    ("cannot-assess-degraded", 1e12, 0.0, -1e12, (0xEC, 0xEF, 0xF1), "Cannot assess: the image is degraded"),
    ("uncertain", 1e12, 2.0, 1e12, (0xFF, 0xF6, 0xDC), "Uncertain: the model abstains"),
])
def test_out_of_scope_and_uncertain_states(browser: Browser, image_run: Path, gated_run_factory: Callable[..., Any],
                                           serve_in_thread: Callable[..., Any], tmp_path: Path, state: str,
                                           threshold: float, margin: float, degradation: float,
                                           box_colour: tuple[int, int, int], text: str) -> None:
    run_dir = gated_run_factory(image_run, tmp_path, threshold, margin, degradation)
    with serve_in_thread(create_app(load_run(run_dir), ServeSettings(warmup=False))) as base:
        page, errors = _page_with_photo(browser, base, tmp_path, {"width": 1280, "height": 900})
        page.get_by_test_id("submit").click()
        page.get_by_test_id("result").wait_for(state="visible", timeout=60_000)
        box = page.get_by_test_id("assessment")
        box.wait_for(state="visible")
        assert text in box.inner_text()
        shot = box.screenshot(path=str(_shots(tmp_path) / f"serve-{state}-box.png"))
        assert _background(shot) == box_colour  # the state is drawn in its own colour
        page.screenshot(path=str(_shots(tmp_path) / f"serve-{state}.png"), full_page=True)
        if state.startswith("cannot-assess"):  # no class and no referral anywhere on the page
            assert page.get_by_test_id("referral").is_hidden() and page.get_by_test_id("bars-block").is_hidden()
            assert page.get_by_test_id("heatmap").is_hidden()
        else:  # abstaining still shows the probabilities and the referral flag
            assert page.get_by_test_id("referral").is_visible() and page.locator("#bars li").count() == 7
        assert page.get_by_test_id("warnings").is_hidden() and errors == []
        page.close()


@pytest.mark.parametrize(("threshold", "shown"), [(1e12, True), (-1.0, False)])
def test_a_flagged_subgroup_shows_a_caution_beside_a_verdict(browser: Browser, image_run: Path, tmp_path: Path,
                                                              gated_run_factory: Callable[..., Any],
                                                              flagged_card_factory: Callable[..., None],
                                                              serve_in_thread: Callable[..., Any], threshold: float,
                                                              shown: bool) -> None:
    run_dir = gated_run_factory(image_run, tmp_path, threshold)  # 1e12: assessed; -1: cannot assess, no verdict
    flagged_card_factory(run_dir)
    with serve_in_thread(create_app(load_run(run_dir), ServeSettings(warmup=False))) as base:
        page, errors = _page_with_photo(browser, base, tmp_path, {"width": 390, "height": 844})
        cautions = page.get_by_test_id("cautions")
        for site, flagged in (("lower extremity", True), ("back", False), ("lower extremity", True)):
            page.get_by_test_id("site").select_option(site)
            with page.expect_response("**/v1/predict"):
                page.get_by_test_id("submit").click()
            page.get_by_test_id("result").wait_for(state="visible", timeout=60_000)
            page.wait_for_function("!document.getElementById('submit').disabled")
            assert cautions.is_visible() == (flagged and shown)
        if shown:
            assert "Less reliable for this patient" in cautions.inner_text()
            assert "lesions on the lower extremity (balanced accuracy 0.55" in cautions.inner_text()
            shot = cautions.screenshot(path=str(_shots(tmp_path) / "serve-caution-box.png"))
            assert _background(shot) == (0xFF, 0xF6, 0xDC)  # amber, as the uncertain state
            referral = page.get_by_test_id("referral").bounding_box()
            assert cautions.bounding_box()["y"] < referral["y"]  # read before the referral line
        else:
            assert page.get_by_test_id("assessment").is_visible() and page.get_by_test_id("referral").is_hidden()
        assert errors == []
        page.close()


def test_a_synthetic_run_shows_its_warning_on_top(browser: Browser, image_run: Path, tmp_path: Path,
                                                  serve_in_thread: Callable[..., Any]) -> None:
    import shutil

    from lesionlab.runs import update_run_info

    run_dir = Path(shutil.copytree(image_run, tmp_path / "synthetic"))
    update_run_info(run_dir, data={"source": "synthetic", "synthetic": True})
    settings = ServeSettings(warmup=False, allow_synthetic=True)
    with serve_in_thread(create_app(load_run(run_dir), settings)) as base:
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(base + "/")
        warnings = page.get_by_test_id("warnings")
        warnings.wait_for(state="visible")
        assert "SYNTHETIC" in warnings.inner_text() and "not fit for clinical use" in warnings.inner_text()
        shot = warnings.screenshot(path=str(_shots(tmp_path) / "serve-synthetic-warning.png"))
        assert _background(shot) == (0xFD, 0xE8, 0xE6)
        page.close()
