"""mkdocs hook: LaTeX math to MathML when the site is built, so pages need no script and no network.

``pymdownx.arithmatex`` (generic mode) protects ``$…$`` and ``$$…$$`` from the Markdown processor and wraps
them as ``<span class="arithmatex">\\(…\\)</span>`` / ``<div class="arithmatex">\\[…\\]</div>``; this hook
replaces each wrapper by the MathML that ``latex2mathml`` produces. Browsers render MathML natively.
A formula the converter cannot read fails the build, naming the page and the formula.
"""

from __future__ import annotations

import html
import re

import latex2mathml.converter

WRAPPED = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)
DELIMITERS = {"span": (r"\(", r"\)"), "div": (r"\[", r"\]")}


def to_mathml(tex: str, display: bool) -> str:
    return latex2mathml.converter.convert(tex, display="block" if display else "inline")


def on_page_content(content, page, config, files):
    def render(match: re.Match) -> str:
        tag, text = match.group(1), html.unescape(match.group(2)).strip()
        opening, closing = DELIMITERS[tag]
        if not (text.startswith(opening) and text.endswith(closing)):
            raise ValueError(f"{page.file.src_uri}: unexpected math wrapper {text[:60]!r}")
        tex = text[len(opening):-len(closing)].strip()
        try:
            mathml = to_mathml(tex, display=tag == "div")
        except Exception as err:  # the converter's own errors vary; name the formula
            raise ValueError(f"{page.file.src_uri}: cannot render {tex!r}: {err}") from err
        return f'<div class="math">{mathml}</div>' if tag == "div" else mathml

    return WRAPPED.sub(render, content)
