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
    """Each equation's **Code:** line names its implementers (a NumPy one; a torch one, or why none), each of
    which exists and cites the equation in its first docstring line, and tests that exist; where a torch
    implementer is named, one of the tests exercises torch (the NumPy tests alone would not check it)."""
    body = sections()[anchor]
    line = re.search(r"\*\*Code:\*\*(.*)", body)
    assert line, f"{anchor}: no **Code:** line"
    code = line.group(1)
    implementers = re.findall(r"`(moram_ref\.[^`]+)`", code)
    torch_named = re.search(r"torch `(moram_ref\.[^`]+)`", code)
    tests = re.findall(r"`(tests/[^`]+::[^`]+)`", code)
    assert re.search(r"NumPy `moram_ref\.", code) and tests, f"{anchor}: needs a NumPy implementer and a test"
    assert torch_named or "torch — (" in code, f"{anchor}: name the torch implementer or say why none"
    for name in implementers:
        obj = resolve(name)
        first_line = (obj.__doc__ or "").strip().splitlines()[0]
        assert f"theory.md#{anchor}" in first_line, f"{name} must cite {anchor} in its first docstring line"
    bodies = []
    for test in tests:
        file, _, name = test.partition("::")
        source = (ROOT / file).read_text()
        found = re.search(rf"\ndef {re.escape(name)}\(.*?(?=\n(?:def |@|class )|\Z)", source, re.S)
        assert found, f"{anchor}: test {test} not found"
        bodies.append(found.group(0))
    if torch_named:
        assert any("torch" in b for b in bodies), f"{anchor}: no named test exercises the torch implementer"


# The docs build (strict, offline, math and tutorial pages) is tested at the end of tests/test_tutorials.py,
# where it reuses the tutorials that module has just executed.
