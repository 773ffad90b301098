"""The README's k-JVP example runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_jvp_example_runs():
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)  # contains its own assertions
    assert ns["dy"].shape == (16,) and ns["out"].tangent.shape == (16, 4)
