"""The page's text helpers, shared by page.py and page_ood.py: HTML escaping and number formats."""

from __future__ import annotations

import html
import math


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value) -> str:
    """The shown form of a number: integers as they are, floats with 6 significant digits."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, bool) or isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(fmt(v) for v in value)
    return str(value)
