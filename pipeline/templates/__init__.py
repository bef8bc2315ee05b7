"""The HTML pages the jobs write (evaluate's ``report.html``, segment's ``overlays/index.html``), as jinja2
templates shipped with the package (``pipeline/templates/*.html.j2``).

Every value put into a page is HTML-escaped (autoescaping, on for every ``.html.j2`` template): a video or
sequence name with ``<``, ``&`` or quotes shows as written and can never add markup. What is markup on purpose is
in the templates, or marked with :class:`markupsafe.Markup` by the code that makes it.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jinja2
from markupsafe import Markup

__all__ = ["render"]


def _score(value: Any, digits: int = 3) -> Any:
    """The ``score`` filter: a float with ``digits`` decimals, an en dash when there is none (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Markup("&ndash;")
    return f"{value:.{digits}f}" if isinstance(value, float) else value


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2"), default=True),
        undefined=jinja2.StrictUndefined,  # a value the code forgot to pass is an error, not an empty string
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["score"] = _score
    return env


def render(template: str, **context: Any) -> str:
    """The page ``template`` (a file name in this folder, e.g. ``"report.html.j2"``) filled with ``context``."""
    return _environment().get_template(template).render(**context)
