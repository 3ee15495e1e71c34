"""Every tutorial runs as the docs site publishes it: as a notebook in a fresh kernel, started in an empty
scratch folder, with its claims asserted in its own cells; the figures it shows are also saved. Then the
docs site builds (strict, offline) with every tutorial as a page with its outputs, every equation
rendered to MathML, and the code beside each equation of the theory page."""

from __future__ import annotations

import ast
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

for _module in ("jupytext", "nbformat", "nbclient", "nbconvert"):  # the docs tools: `make install-dev` has them,
    pytest.importorskip(_module, reason=f"{_module} is not installed (the lent GPU image lacks the docs tools)")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs_build"))
import notebooks  # noqa: E402  (docs_build/notebooks.py: shared with the docs hook)

TUTORIALS = notebooks.tutorial_paths()
DATA = shared_data("llm-cl-benchmark-500")


def tutorial_env(path: Path) -> dict:
    """This process's environment; a tutorial that needs data (``notebooks.NEEDS``) gets ``DATA`` when it
    exists, every other tutorial runs on its own defaults (no data variable set)."""
    env = {k: v for k, v in os.environ.items() if k not in set(notebooks.NEEDS.values())}
    name = notebooks.NEEDS.get(path.stem)
    if name and DATA.is_dir():
        env[name] = str(DATA)
    return env


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> Path:
    """Where the executed notebooks go, for the docs build at the end of this module to reuse."""
    return tmp_path_factory.mktemp("executed-tutorials")


def test_there_are_tutorials():
    assert [p.name[:2] for p in TUTORIALS] == [f"{i:02d}" for i in range(1, len(TUTORIALS) + 1)]
    assert len(TUTORIALS) >= 8


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_defines_no_functions_or_classes(path):
    tree = ast.parse(path.read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defined, f"{path.name} should import from moram_ref instead of defining {defined}"
    assert path.read_text().startswith("# %% [markdown]"), "jupytext percent format, markdown first"


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_ends_with_exercises_to_run(path):
    """An Exercises section near the end: two or three numbered questions, then a cell that answers them."""
    cells = notebooks.unexecuted(path).cells
    found = [i for i, c in enumerate(cells)
             if c.cell_type == "markdown" and re.search(r"^#+ Exercises", c.source, re.M)]
    assert found, f"{path.name}: no Exercises section"
    questions = cells[found[-1]].source.split("Exercises", 1)[1]
    assert len(re.findall(r"^\d\. ", questions, re.M)) in (2, 3), f"{path.name}: two or three questions"
    assert any(c.cell_type == "code" for c in cells[found[-1] + 1 :]), f"{path.name}: no cell that answers them"
    assert all(c.cell_type == "markdown" for c in cells[found[-1] + 2 :]), f"{path.name}: exercises come last"


@pytest.mark.cpu_only  # CPU scripts by design (about a minute each)
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path, executed):
    env = tutorial_env(path)
    if notebooks.missing_requirement(path, env):
        pytest.skip(f"{path.name} needs the benchmark data, which the tests pass it as {notebooks.NEEDS[path.stem]}: {DATA} "
                    "is not present (for the tests set MORAM_SHARED_DATA to the folder that holds llm-cl-benchmark-500/; "
                    "by hand, the tutorial reads DATA_ROOT=<that folder>/llm-cl-benchmark-500)")
    figures = tmp_path / "figures"
    nb = notebooks.execute(path, figures, environ=env)  # a failing cell (a false claim) raises here
    shown, saved = notebooks.figure_count(nb), len(list(figures.glob("*.png")))
    assert saved >= shown, f"{path.name} shows {shown} figures but saved {saved} under MORAM_FIGURES"
    notebooks.save(nb, executed, path.stem)


@pytest.mark.parametrize("stem", ["07_llm_backbone", "08_real_evidence_on_cpu"])
def test_a_wrong_data_root_is_named_in_one_line(stem, tmp_path):
    """DATA_ROOT pointing at a folder without the benchmark: the tutorial stops at once, naming the variable
    and its value (not a library error suggesting a command-line flag a tutorial cannot take)."""
    env = {**os.environ, "DATA_ROOT": str(tmp_path), "MORAM_FIGURES": str(tmp_path / "figures")}
    proc = subprocess.run([sys.executable, str(ROOT / "tutorials" / f"{stem}.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"DATA_ROOT={str(tmp_path)!r}") and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.cpu_only  # executes the tutorials it finds unexecuted
def test_docs_site_builds_with_pages_math_and_code(executed, tmp_path):
    """Strict offline build; tutorial pages with figures; MathML for every equation; code under each one."""
    exe = Path(sys.executable).parent / "mkdocs"
    env = {**tutorial_env(TUTORIALS[-1]), "MORAM_EXECUTED_NOTEBOOKS": str(executed)}
    site = tmp_path / "site"
    proc = subprocess.run([str(exe) if exe.exists() else "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]

    for path in TUTORIALS:
        page = (site / "tutorials" / path.stem / "index.html").read_text()
        if "Not executed in this build" in page:
            assert notebooks.missing_requirement(path, env), f"{path.name} was published unexecuted"
            continue
        images = re.findall(rf'<img[^>]+src="\.\./({re.escape(path.stem)}_files/[^"]+\.png)"', page)
        assert len(images) >= path.read_text().count("plt.show()"), f"{path.name}: figures missing from its page"
        for name in images:
            assert (site / "tutorials" / name).is_file(), f"{path.name}: {name} not written"
        assert "<math" in page or "$" not in path.read_text(), f"{path.name}: its math was not rendered"
    assert "01_linear_associative_memory/" in (site / "tutorials" / "index.html").read_text()

    theory_md = (ROOT / "docs" / "theory.md").read_text()
    theory = (site / "theory" / "index.html").read_text()
    displayed = re.findall(r"<math[^>]*display=\"block\"[^>]*>(.*?)</math>", theory, re.S)
    assert len(displayed) == theory_md.count("$$") // 2 >= 23
    assert not [m for m in displayed if "<em>" in m or "merror" in m], "an equation was mangled"
    for html_page in site.rglob("*.html"):
        text = html_page.read_text()
        assert 'class="arithmatex"' not in text and "$$" not in text, f"unrendered math in {html_page}"
        external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', text)
        assert not external, f"{html_page} loads {external} when viewed"
    code_lines = re.findall(r"^\*\*Code:\*\*.*$", theory_md, re.M)
    shown = html.unescape(re.sub(r"<[^>]+>", "", theory))  # the page's text, highlighting removed
    assert theory.count("NumPy, <code>") == len(code_lines)
    for dotted in re.findall(r"NumPy `([^`]+)`", "\n".join(code_lines)):
        name = dotted.rsplit(".", 1)[1]
        assert re.search(rf"(def {name}\(|class {name}\b|{re.escape(dotted)}\.forward)", shown), f"{dotted}: no source"
