"""Every Python block in README.md runs as written (each in a fresh namespace, from a scratch folder)."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}-{b.splitlines()[0][:30]}" for i, b in enumerate(BLOCKS)])
def test_readme_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a block that writes files writes them here
    ns: dict = {"__name__": "__readme__"}
    exec(compile(block, "README.md", "exec"), ns)  # the blocks carry their own assertions


def test_readme_jvp_example_results():
    ns: dict = {}
    exec(compile(BLOCKS[0], "README.md", "exec"), ns)
    assert ns["dy"].shape == (16,) and ns["out"].tangent.shape == (16, 4)
