"""The main job needs only NumPy (the demo extra): the CLI must not import torch to run it."""

from __future__ import annotations

import subprocess
import sys

BLOCK = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'transformers', 'open_clip', 'torchvision', 'safetensors'):
            raise ImportError(f'{name} is not installed (blocked by the test)')
        return None
sys.meta_path.insert(0, _Block())
"""


def test_demo_runs_without_torch(tmp_path):
    code = BLOCK + (
        "from moram_ref.cli import main\n"
        f"status = main(['demo', '--out', r'{tmp_path / 'demo'}', '--steps', '2'])\n"
        "assert 'torch' not in sys.modules\n"
        "raise SystemExit(status)\n"  # a failed or interrupted demo fails here, with its message
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "demo" / "results.json").is_file() and (tmp_path / "demo" / "digits_accuracy.png").is_file()
