"""The README's library snippet runs as it stands (a user copies it): two tasks, a checkpoint after each."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_library_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    text = README.read_text()
    section = text[text.index("## The library in a few lines"):text.index("## Files")]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md (the library snippet)", "exec"), {"__name__": "readme_snippet"})  # noqa: S102
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["task 1", "task 2"]
    assert "'trainable': 0, 'frozen_atoms': 5248" in printed[1]  # 2 layers × 2 tasks × 16 atoms × (d_in + d_out)
    from moram_ref.torch import checkpoint

    for t in (1, 2):
        assert checkpoint.verify(tmp_path / f"task{t}.safetensors", tasks_done=t)["tasks_done"] == t
