"""Griffe extension for the API reference: Sphinx roles in docstrings become links.

The docstrings use reStructuredText roles (``:func:`~lesionlab.runs.load_run```); mkdocstrings renders Markdown. This
extension rewrites each role into an optional cross-reference: a link when the target is documented on the site, the
name in code otherwise (never a broken link, so ``mkdocs build --strict`` stays meaningful for the pages themselves).
Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(?P<tilde>~?)(?P<target>[^`<>]+?)`")


def role_to_markdown(match: re.Match[str], module: str) -> str:
    """One role as an optional autorefs link; ``~`` shows the last name only, as in Sphinx."""
    target = match["target"].strip().rstrip("()")
    shown = target.rsplit(".", 1)[-1] if match["tilde"] else target
    identifier = target if "." in target or not module else f"{module}.{target}"
    return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'


def convert(text: str, module: str = "") -> str:
    """Every Sphinx role in ``text`` rewritten (pure, for the tests)."""
    return ROLE.sub(lambda m: role_to_markdown(m, module), text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles of every docstring griffe loads."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            module = obj.module.path if obj.is_module is False else obj.path
            obj.docstring.value = convert(obj.docstring.value, module)
