"""The page at ``GET /``: a static HTML file shipped with the package (``page.html``), filled in per request
with the route prefix, the default model, the model list and whether a token box is shown."""

from __future__ import annotations

import functools
import json
from pathlib import Path

PAGE_FILE = Path(__file__).with_name("page.html")


@functools.cache
def _template() -> str:
    return PAGE_FILE.read_text(encoding="utf-8")


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def render_page(root: str, default: str, names: list[str], auth: bool) -> str:
    """The page for an app under ``root`` (its route prefix): every value is escaped for where it lands."""
    options = "".join(
        f'<option value="{_html_escape(n)}"{" selected" if n == default else ""}>{_html_escape(n)}</option>'
        for n in names
    )
    return (
        _template().replace("__ROOT__", json.dumps(root).replace("<", "\\u003c"))
        .replace("__DEFAULT__", _html_escape(default))
        .replace("__OPTIONS__", options)
        .replace("__TOKEN_HIDDEN__", "" if auth else "hidden")
    )
