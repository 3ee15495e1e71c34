"""mkdocs hook: under each equation of ``theory.md``, the code that implements it, read from the package.

Each equation's ``**Code:**`` line names a NumPy implementer, a torch implementer (or says why none) and a
test (``tests/test_theory_anchors.py`` checks those names). This hook appends, right under that line, the
NumPy source (``inspect.getsource`` at build time, so the page cannot drift from the code), and, folded,
the torch counterpart's source and the test's source. A class shows its ``forward`` method.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CODE_LINE = re.compile(r"^\*\*Code:\*\*.*$", re.M)


def resolve(dotted: str):
    """``package.module.attr.attr`` → the object (the longest importable module prefix, then attributes)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(f"theory.md names {dotted!r}, which does not import")


def _source(dotted: str) -> tuple[str, str]:
    obj = resolve(dotted)
    shown = inspect.unwrap(obj.forward if inspect.isclass(obj) and hasattr(obj, "forward") else obj)
    lines, start = inspect.getsourcelines(shown)
    where = f"{Path(inspect.getsourcefile(shown)).resolve().relative_to(ROOT)}:{start}"
    label = f"{dotted}.forward" if inspect.isclass(obj) and hasattr(obj, "forward") else dotted
    return label + f" — {where}", _dedent(lines)


def _dedent(lines: list[str]) -> str:
    indent = min(len(x) - len(x.lstrip()) for x in lines if x.strip())
    return "".join(x[indent:] if x.strip() else x for x in lines).rstrip()


def _test_source(spec: str) -> tuple[str, str]:
    file, _, name = spec.partition("::")
    text = (ROOT / file).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            body = "\n".join(text.splitlines()[first - 1 : node.end_lineno])
            return f"{spec} — {file}:{first}", body
    raise ValueError(f"theory.md names test {spec!r}, which does not exist")


def _fenced(code: str, indent: str = "") -> str:
    return "\n".join(indent + line for line in ["```python", *code.splitlines(), "```"])


def _block(line: str) -> str:
    numpy_impl = re.search(r"NumPy `([^`]+)`", line)
    torch_impl = re.search(r"torch `([^`]+)`", line)
    test = re.search(r"test `([^`]+)`", line)
    torch_test = re.search(r"torch test `([^`]+)`", line)
    parts = [line, ""]
    if numpy_impl:
        label, code = _source(numpy_impl.group(1))
        parts += [f"NumPy, `{label}`:", "", _fenced(code), ""]
    if torch_impl:
        label, code = _source(torch_impl.group(1))
        parts += [f'??? note "torch counterpart: {label}"', "", _fenced(code, "    "), ""]
    if test:
        label, code = _test_source(test.group(1))
        parts += [f'??? note "test: {label}"', "", _fenced(code, "    "), ""]
    if torch_test:
        label, code = _test_source(torch_test.group(1))
        parts += [f'??? note "torch test: {label}"', "", _fenced(code, "    "), ""]
    return "\n".join(parts)


def on_page_markdown(markdown, page, config, files):
    if page.file.src_uri != "theory.md":
        return markdown
    return CODE_LINE.sub(lambda m: _block(m.group(0)), markdown)
