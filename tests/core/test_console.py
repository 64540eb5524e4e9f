"""The commands' console: tables in a log file keep their figures."""

from __future__ import annotations

import pytest
from rich.table import Table

from lesionlab.core.console import LOG_WIDTH, console_width, make_console


@pytest.mark.parametrize(("is_terminal", "environ", "expected"), [
    (True, {}, None),                      # a terminal: rich fits the table to it
    (True, {"COLUMNS": "100"}, None),
    (False, {}, LOG_WIDTH),                # a file or pipe: wide enough for every table
    (False, {"COLUMNS": "100"}, None),     # the user's COLUMNS wins (rich reads it)
    (False, {"COLUMNS": "  "}, LOG_WIDTH),  # set but empty counts as unset
])
def test_console_width(is_terminal: bool, environ: dict[str, str], expected: int | None) -> None:
    assert console_width(is_terminal, environ) == expected


def _wide_table() -> Table:
    """The shape of the evaluation's decision-rules table, its widest."""
    table = Table("rule", "accuracy", "balanced accuracy", "95% CI",
                  *(f"recall {c}" for c in ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")),
                  "malignant sens. / spec.")
    table.add_row("balanced", "0.887", "0.786", "0.741 - 0.827", *(["0.769"] * 7), "0.804 / 0.937")
    return table


def test_a_log_keeps_every_figure(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console()  # pytest captures stdout: no terminal
    assert console.width == LOG_WIDTH
    console.print(_wide_table())
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if "balanced" in line and "0.887" in line)
    assert "0.741 - 0.827" in row and "0.804 / 0.937" in row and "malignant sens. / spec." in out  # nothing wrapped


def test_columns_is_honoured(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    console = make_console()
    assert console.width == 80
    console.print(_wide_table())
    out = capsys.readouterr().out
    assert "0.741 - 0.827" not in out  # what rich does at 80 columns, and what LOG_WIDTH avoids


def test_stderr_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    console = make_console(stderr=True, highlight=False)
    assert console.stderr and console.width == LOG_WIDTH
