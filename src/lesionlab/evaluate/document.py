"""The pieces every report is made of: tables and figures that render identically into HTML and Markdown.

A :class:`Document` is what a report template needs; :mod:`lesionlab.evaluate.report` builds the run report and
writes it, :mod:`lesionlab.evaluate.grid_report` the grid report, and the subgroup and robustness sections
(:mod:`lesionlab.evaluate.subgroups`, :mod:`lesionlab.evaluate.robustness_report`) add their own tables and plots.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Table:
    """A titled table rendered identically into HTML and Markdown (cells are already formatted strings)."""

    title: str
    testid: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""

    def markdown(self) -> str:
        """GitHub Markdown: heading, table, note."""
        esc = [str(c).replace("|", "\\|") for c in self.columns]
        lines = [f"### {self.title}", "", "| " + " | ".join(esc) + " |", "|" + "---|" * len(esc)]
        lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)


@dataclass
class Plot:
    """A figure as an inline PNG data URI."""

    title: str
    testid: str
    data_uri: str
    alt: str
    caption: str = ""


@dataclass
class Document:
    """Everything a report template needs."""

    title: str
    subtitle: str
    kind: str  # "run" or "grid"
    warnings: list[str] = field(default_factory=list)
    card: list[tuple[str, str]] = field(default_factory=list)  # model card: (field, text)
    card_lists: dict[str, list[str]] = field(default_factory=dict)  # model card: (heading -> bullet points)
    plots: list[Plot] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def fmt(value: Any, digits: int = 3) -> str:
    """A cell: ``n/a`` for undefined, fixed decimals for floats, text otherwise."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def fmt_ci(ci: dict[str, Any] | None) -> str:
    """``low - high`` of a bootstrap CI, or why it is missing."""
    if not ci:
        return "not computed"
    if ci.get("low") is None:
        return f"n/a ({ci.get('undefined', 'undefined')})"
    return f"{ci['low']:.3f} – {ci['high']:.3f}"
