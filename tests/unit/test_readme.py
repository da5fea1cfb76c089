"""The README's engine example runs as written, so the documented API cannot drift from the code."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_engine_example_runs():
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    result, plan = namespace["result"], namespace["plan"]
    assert result.canvas.shape[-2:] == (plan.canvas_height, plan.canvas_width)
    assert result.tiles.shape[0] == len(plan)
    assert torch.isfinite(result.canvas).all()
