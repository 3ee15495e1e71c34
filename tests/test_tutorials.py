"""Every tutorial runs as shown (as a script, with its small defaults) and redefines nothing."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import shared_data

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
DATA = shared_data("llm-cl-benchmark-500")


def test_there_are_tutorials():
    assert len(TUTORIALS) >= 6


@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_defines_no_functions_or_classes(path):
    tree = ast.parse(path.read_text())
    defined = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defined, f"{path.name} should import from moram_ref instead of defining {defined}"
    assert path.read_text().startswith("# %% [markdown]"), "jupytext percent format, markdown first"


@pytest.mark.cpu_only  # CPU scripts by design (about a minute each)
@pytest.mark.parametrize("path", TUTORIALS, ids=[p.stem for p in TUTORIALS])
def test_tutorial_runs(path, tmp_path):
    if "real_evidence" in path.name and not DATA.is_dir():
        pytest.skip("../shared/data not present")
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.pop("DATA_ROOT", None)
    if DATA.is_dir():  # hidden or absent: the tutorials run on their own defaults
        env["DATA_ROOT"] = str(DATA)
    proc = subprocess.run([sys.executable, str(path)], cwd=ROOT / "tutorials", env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
