"""The participant page in Debian's headless chromium: a whole `separate` study in both arms, a time-out that
advances the page, closing and reopening the browser, and a `revise` case with both answers.

Screenshots go to the test's temporary folder, or to ``$LESIONLAB_SCREENSHOTS`` when set.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from lesionlab.study.app import create_study_app
from lesionlab.study.export import answers_frame
from lesionlab.study.folder import open_study
from lesionlab.study.participation import invite

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SMALL = {"per_class": {"mel": 1, "nv": 1, "bkl": 1}}

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


class Served:
    def __init__(self, path: Path, serve_in_thread: Any) -> None:
        self.folder = open_study(path)
        self._ctx = serve_in_thread(create_study_app(self.folder))
        self.base = self._ctx.__enter__()

    def link(self) -> str:
        with self.folder.sessions.begin() as db:
            (one,) = invite(db, self.folder.study_id, self.folder.definition, 1)
        return one.link(self.base)

    def close(self) -> None:
        self._ctx.__exit__(None, None, None)
        self.folder.close()


@pytest.fixture()
def served(make_study, serve_in_thread) -> Iterator[Any]:
    servers: list[Served] = []

    def make(definition: dict) -> Served:
        servers.append(Served(make_study(definition), serve_in_thread))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def _shots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("LESIONLAB_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


def _open(browser: Browser, link: str, errors: list[str], context: Any = None) -> Page:
    page = (context or browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(link)
    return page


def _consent(page: Page) -> None:
    page.get_by_test_id("screen-consent").wait_for(state="visible")
    assert "dermoscopy" in page.get_by_test_id("instructions").inner_text()
    page.get_by_test_id("consent-box").check()
    page.get_by_test_id("consent-go").click()


def _wait_case(page: Page, text: str) -> None:
    page.get_by_test_id("screen-case").wait_for(state="visible")
    page.wait_for_function("t => document.getElementById('progress').textContent.startsWith(t)", arg=text)
    page.wait_for_function("() => { const i = document.getElementById('photo'); return i.complete && "
                           "i.naturalWidth > 0; }")


def _slide(page: Page, value: int) -> None:
    """Move the confidence slider as a user does (the input event updates the page)."""
    page.eval_on_selector("#confidence", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
                          str(value))


def test_a_participant_completes_a_separate_study_in_both_arms(browser, served, tiny_run, study_definition,
                                                               tmp_path) -> None:
    server = served(study_definition(tiny_run, name="browser-separate", cases=SMALL, time_limit_s=60))
    errors: list[str] = []
    page = _open(browser, server.link(), errors)
    assert "#" not in page.url.split("/join")[-1] or page.url.endswith("/join")
    _consent(page)
    shots = _shots(tmp_path)
    for n in range(1, 7):
        _wait_case(page, f"Case {n} of 6")
        assisted = n > 3
        assert page.get_by_test_id("support").is_visible() == assisted
        if assisted:
            assert "Most likely:" in page.get_by_test_id("support-top").inner_text()
            assert page.locator("#support-bars li").count() == 7
            page.wait_for_function("() => document.getElementById('heatmap').naturalWidth > 0")
        assert "Melanoma" in page.get_by_test_id("answers").inner_text()
        if n in (1, 4):
            page.screenshot(path=str(shots / f"study-case-{n}.png"))
        if n % 2:
            page.keyboard.press("5")  # keys 1-7 answer
        else:
            page.get_by_test_id("answer-nv").click()
    page.get_by_test_id("screen-finished").wait_for(state="visible")
    assert not errors, errors
    frame = answers_frame(server.folder)
    assert len(frame) == 6 and frame["arm"].tolist() == ["unassisted"] * 3 + ["assisted"] * 3
    assert frame["answer"].tolist() == ["mel", "nv"] * 3 and not frame["timed_out"].any()
    assert (frame["elapsed_ms"] > 0).all()


def test_a_time_out_advances_the_page_and_is_stored(browser, served, study_definition) -> None:
    server = served(study_definition(name="browser-timeout", arms=["unassisted"], cases=SMALL, time_limit_s=2,
                                     grace_s=1))
    errors: list[str] = []
    page = _open(browser, server.link(), errors)
    _consent(page)
    _wait_case(page, "Case 1 of 3")
    assert page.get_by_test_id("countdown").inner_text() in ("2 s", "1 s")
    _wait_case(page, "Case 2 of 3")  # nobody answered: the countdown reached zero and the page moved on
    page.get_by_test_id("answer-bkl").click()
    _wait_case(page, "Case 3 of 3")
    assert not errors, errors
    frame = answers_frame(server.folder)
    assert frame["timed_out"].tolist() == [True, False] and frame["answer"].tolist() == ["", "bkl"]
    assert 1800 <= frame.loc[0, "server_elapsed_ms"] <= 3500


def test_closing_and_reopening_resumes_at_the_right_case(browser, served, study_definition) -> None:
    server = served(study_definition(name="browser-resume", arms=["unassisted"], cases=SMALL))
    link = server.link()
    errors: list[str] = []
    context = browser.new_context()
    page = _open(browser, link, errors, context)
    _consent(page)
    _wait_case(page, "Case 1 of 3")
    page.get_by_test_id("answer-mel").click()
    _wait_case(page, "Case 2 of 3")
    page.close()  # closed mid-case
    again = _open(browser, link.split("#")[0], errors, context)  # the same browser, without the fragment
    _wait_case(again, "Case 2 of 3")
    again.get_by_test_id("answer-df").click()
    _wait_case(again, "Case 3 of 3")
    context.close()
    elsewhere = _open(browser, link, errors)  # another browser with the link: the server knows where it was
    _wait_case(elsewhere, "Case 3 of 3")
    elsewhere.get_by_test_id("answer-vasc").click()
    elsewhere.get_by_test_id("screen-finished").wait_for(state="visible")
    assert not errors, errors
    assert answers_frame(server.folder)["answer"].tolist() == ["mel", "df", "vasc"]


def test_a_revise_case_records_both_answers(browser, served, tiny_run, study_definition, tmp_path) -> None:
    server = served(study_definition(tiny_run, name="browser-revise", design="revise", arms=["assisted"],
                                     cases={"per_class": {"mel": 1}}, form={"confidence": True}))
    errors: list[str] = []
    page = _open(browser, server.link(), errors)
    _consent(page)
    _wait_case(page, "Case 1 of 1 · your answer")
    assert not page.get_by_test_id("support").is_visible()
    page.get_by_test_id("answer-nv").click()
    _slide(page, 20)
    page.keyboard.press("Enter")
    _wait_case(page, "Case 1 of 1 · your answer with the model")
    assert page.get_by_test_id("support").is_visible()
    assert "Your first answer: Melanocytic nevi" in page.get_by_test_id("first-answer").inner_text()
    page.screenshot(path=str(_shots(tmp_path) / "study-revise-step2.png"))
    page.keyboard.press("5")
    _slide(page, 85)
    page.get_by_test_id("submit").click()
    page.get_by_test_id("screen-finished").wait_for(state="visible")
    assert not errors, errors
    frame = answers_frame(server.folder)
    assert frame["step"].tolist() == [1, 2] and frame["answer"].tolist() == ["nv", "mel"]
    assert frame["confidence"].tolist() == [20.0, 85.0] and frame["model_shown"].tolist() == [False, True]


def test_the_admin_page_shows_progress_and_closes_the_study(browser, served, study_definition) -> None:
    server = served(study_definition(name="browser-admin", arms=["unassisted"], cases=SMALL))
    server.link()
    page = browser.new_page()
    page.on("dialog", lambda d: d.accept())
    page.goto(server.base + "/admin")
    page.get_by_test_id("admin-token").fill(server.folder.admin_token_file().read_text().strip())
    page.get_by_test_id("admin-login").click()
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 1")
    assert "reader 1" in page.get_by_test_id("progress-table").inner_text()
    page.get_by_test_id("close-study").click()
    page.wait_for_function("() => document.getElementById('summary').textContent.includes('closed')")
    page.close()  # stop its polling, so the server shuts down at once
