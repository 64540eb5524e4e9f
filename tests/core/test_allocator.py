"""The malloc settings of the command line: when they apply, when they are left alone, and that glibc takes them."""

from __future__ import annotations

import platform

import pytest

from lesionlab.core.allocator import OPT_OUT, skip_reason, tune_malloc


@pytest.mark.parametrize(("environ", "libc", "reason"), [
    ({}, "glibc", None),
    ({"LESIONLAB_MALLOC": "tuned"}, "glibc", None),
    ({}, "", "the C library is unknown, not glibc"),
    ({}, "musl", "the C library is musl, not glibc"),
    ({OPT_OUT: "Default"}, "glibc", f"{OPT_OUT}=default"),
    ({"MALLOC_TRIM_THRESHOLD_": "0"}, "glibc", "MALLOC_TRIM_THRESHOLD_ set by the user"),
    ({"MALLOC_MMAP_THRESHOLD_": "1", "MALLOC_TRIM_THRESHOLD_": "2"}, "glibc",
     "MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_ set by the user"),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "glibc", "another allocator is preloaded"),
])
def test_skip_reason(environ: dict[str, str], libc: str, reason: str | None) -> None:
    assert skip_reason(environ, libc) == reason


def test_tune_malloc_applies_on_glibc_and_honours_the_opt_out() -> None:
    assert tune_malloc({OPT_OUT: "default"}) == f"malloc left at its defaults: {OPT_OUT}=default"
    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"not glibc ({platform.libc_ver()[0] or 'unknown'}): nothing to set")
    assert tune_malloc({}) == "malloc: mmap threshold 32 MiB, trim threshold 2047 MiB"


def test_the_command_line_reports_the_setting_under_debug(capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from lesionlab.cli import main

    monkeypatch.setenv(OPT_OUT, "default")
    assert main(["--debug", "corruptions", "list"]) == 0
    assert f"malloc left at its defaults: {OPT_OUT}=default" in capsys.readouterr().err
