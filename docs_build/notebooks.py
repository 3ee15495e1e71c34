"""Tutorials as executed notebooks and Markdown pages: shared by the docs hook and the test suite.

A tutorial (a jupytext percent script) becomes a notebook, is executed in a fresh Jupyter kernel (figures
inline, working directory a scratch folder, figures saved under ``MORAM_FIGURES``), and is rendered to
Markdown with its outputs and one PNG per displayed figure. The executed notebook records the SHA-256 of
the script it came from, so a notebook executed by the test suite is reused by the docs build only while
the script is unchanged.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "tutorials"
INLINE = "module://matplotlib_inline.backend_inline"
# tutorials that need data users point at themselves: the variable that must be set to execute them
NEEDS = {"08_real_evidence_on_cpu": "DATA_ROOT"}


def tutorial_paths() -> list[Path]:
    return sorted(TUTORIALS.glob("[0-9][0-9]_*.py"))


def source_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_requirement(path: Path, env: dict | None = None) -> str | None:
    """The environment variable a tutorial needs and does not have, or None."""
    name = NEEDS.get(path.stem)
    return name if name and not (env if env is not None else os.environ).get(name) else None


def execute(path: Path, figures: Path, timeout: int = 600, environ: dict | None = None):
    """Run every cell of ``path`` in a fresh kernel; returns the executed notebook (raises on a failing cell).

    The kernel starts in an empty scratch folder (so a tutorial cannot depend on where it is launched
    from), with matplotlib's inline backend (so figures land in the outputs whatever ``MPLBACKEND`` the
    caller has) and ``MORAM_FIGURES=figures``; otherwise the environment is ``environ`` (default: this
    process's)."""
    nb = jupytext.read(path)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    base = dict(os.environ if environ is None else environ)
    env = {**base, "MPLBACKEND": INLINE, "MORAM_FIGURES": str(figures),
           # progress bars would print as blank lines on a page; tqdm.auto would also warn without ipywidgets
           "TQDM_DISABLE": "1",
           "PYTHONWARNINGS": ",".join(filter(None, [base.get("PYTHONWARNINGS"), "ignore:IProgress not found"])),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), base.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as scratch:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": scratch}})
        client.execute(env=env)
    nb.metadata["moram_source_sha256"] = source_hash(path)
    return nb


def cached(path: Path, folder: Path | None):
    """The executed notebook of ``path`` stored in ``folder`` if it was made from the current script."""
    if folder is None or not (folder / f"{path.stem}.ipynb").is_file():
        return None
    nb = nbformat.read(folder / f"{path.stem}.ipynb", as_version=4)
    return nb if nb.metadata.get("moram_source_sha256") == source_hash(path) else None


def save(nb, folder: Path, stem: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{stem}.ipynb")
    return folder / f"{stem}.ipynb"


def figure_count(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells if cell.cell_type == "code"
               for out in cell.get("outputs", []))


def to_markdown(nb, stem: str) -> tuple[str, dict[str, bytes]]:
    """Markdown of the notebook with its outputs; images as ``{stem}_files/…png`` (name → bytes)."""
    body, resources = MarkdownExporter().from_notebook_node(
        nb, resources={"unique_key": stem, "output_files_dir": f"{stem}_files"})
    return body, dict(resources.get("outputs", {}))


def unexecuted(path: Path) -> object:
    """The notebook of ``path`` without outputs (for a tutorial whose data is not available)."""
    return jupytext.read(path)
