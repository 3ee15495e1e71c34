"""mkdocs hook: every tutorial becomes a page of the site, executed, with its printed output and figures.

Pages are generated at build time (never committed): ``tutorials/index.md`` from ``tutorials/README.md``
and ``tutorials/NN_name.md`` from each script, its figures beside it. A notebook that the test suite
already executed is reused when ``MORAM_EXECUTED_NOTEBOOKS`` names its folder and the script is unchanged;
otherwise the tutorial is executed here. A failing cell fails the build. A tutorial whose data variable
(``notebooks.NEEDS``) is unset is published without outputs, with a note saying so at the top.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path

from mkdocs.structure.files import File

import notebooks

log = logging.getLogger("mkdocs.hooks.tutorial_pages")


def _links(markdown: str) -> str:
    """Links written for the repository (``../docs/x.md``, ``NN_name.py``) as links between site pages."""
    markdown = re.sub(r"\]\(\.\./docs/", "](../", markdown)
    return re.sub(r"\]\((\d\d_[a-z0-9_]+)\.py\)", r"](\1.md)", markdown)


def _page(path: Path, folder: Path | None, figures: Path) -> tuple[str, dict[str, bytes]]:
    missing = notebooks.missing_requirement(path)
    if missing:
        log.info(f"{path.name}: {missing} is not set, publishing it without outputs")
        md, images = notebooks.to_markdown(notebooks.unexecuted(path), path.stem)
        note = (f"!!! note \"Not executed in this build\"\n    This page was built without `{missing}`, so it shows "
                f"the code without its outputs. Set `{missing}` (see below) and rebuild to see them.\n\n")
        return note + _links(md), images
    nb = notebooks.cached(path, folder)
    if nb is None:
        log.info(f"executing {path.name}")
        nb = notebooks.execute(path, figures)
    md, images = notebooks.to_markdown(nb, path.stem)
    source = f"*Executed when this site was built; the script is `tutorials/{path.name}`.*\n\n"
    return _links(md).replace("\n", "\n" + source, 1) if md.startswith("# ") else source + _links(md), images


def on_files(files, config):
    folder = os.environ.get("MORAM_EXECUTED_NOTEBOOKS")
    folder = Path(folder) if folder else None
    readme = (notebooks.TUTORIALS / "README.md").read_text()
    files.append(File.generated(config, "tutorials/index.md", content=_links(readme)))
    with tempfile.TemporaryDirectory() as figures:
        for path in notebooks.tutorial_paths():
            md, images = _page(path, folder, Path(figures))
            files.append(File.generated(config, f"tutorials/{path.stem}.md", content=md))
            for name, data in images.items():
                files.append(File.generated(config, f"tutorials/{name}", content=data))
    return files
