"""User text in plotly figures (tokens, model names, languages, titles).

plotly.js draws text as its own small HTML subset: it reads ``<b>``, ``<br>`` and the
like as markup, and turns ``&amp;``, ``&lt;``, ``&gt;`` and numeric entities back into
characters, but not ``&quot;`` (a token ``"`` escaped with :func:`html.escape` shows as
``&quot;``). :func:`plot_text` escapes ``&``, ``<`` and ``>`` only: markup in user text is
shown as text, quotes as quotes. The figure's JSON inside the report's ``<script>`` is
made safe separately (``</`` written as ``<\\/``).
"""

from __future__ import annotations

import html


def plot_text(text: object) -> str:
    """``text`` for a plotly title, label, tick or hover text: ``&``, ``<``, ``>`` escaped,
    quotes left as they are (plotly.js shows them as ``"`` and ``'``)."""
    return html.escape(str(text), quote=False)


__all__ = ["plot_text"]
