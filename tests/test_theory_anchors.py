"""docs/theory.md ↔ code, both directions: every cited anchor exists; every equation names an
implementer per backend that exists and cites it in its first docstring line, and a test that exists."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs_build"))
from code_beside import resolve  # noqa: E402  (the docs hook's resolver: one rule for docs and test)
THEORY = (ROOT / "docs" / "theory.md").read_text()
ANCHORS = re.findall(r'<a id="(eq-[a-z0-9-]+)"></a>', THEORY)


def sections() -> dict[str, str]:
    parts = re.split(r'<a id="(eq-[a-z0-9-]+)"></a>', THEORY)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_anchors_are_unique():
    assert len(ANCHORS) == len(set(ANCHORS)) and len(ANCHORS) >= 20


def test_every_cited_anchor_exists():
    cited = {}
    for path in (ROOT / "moram_ref").rglob("*.py"):
        for anchor in re.findall(r"theory\.md#(eq-[a-z0-9-]+)", path.read_text()):
            cited.setdefault(anchor, path.relative_to(ROOT))
    missing = {a: str(p) for a, p in cited.items() if a not in ANCHORS}
    assert not missing, f"anchors cited in code but absent from docs/theory.md: {missing}"


@pytest.mark.parametrize("anchor", ANCHORS)
def test_every_equation_is_implemented_cited_and_tested(anchor):
    body = sections()[anchor]
    line = re.search(r"\*\*Code:\*\*(.*)", body)
    assert line, f"{anchor}: no **Code:** line"
    numpy_impl = re.search(r"NumPy `([^`]+)`", line.group(1))
    torch_impl = re.search(r"torch `([^`]+)`", line.group(1))
    test = re.search(r"test `([^`]+)`", line.group(1))
    assert numpy_impl and test, f"{anchor}: needs a NumPy implementer and a test"
    assert torch_impl or "torch — (" in line.group(1), f"{anchor}: name the torch implementer or say why none"
    for impl in filter(None, (numpy_impl, torch_impl)):
        obj = resolve(impl.group(1))
        first_line = (obj.__doc__ or "").strip().splitlines()[0]
        assert f"theory.md#{anchor}" in first_line, f"{impl.group(1)} must cite {anchor} in its first docstring line"
    file, _, name = test.group(1).partition("::")
    source = (ROOT / file).read_text()
    assert re.search(rf"def {re.escape(name)}\(", source), f"{anchor}: test {test.group(1)} not found"


# The docs build (strict, offline, math and tutorial pages) is tested at the end of tests/test_tutorials.py,
# where it reuses the tutorials that module has just executed.
