"""The README's Python examples run as written (so the front door stays true)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 2


@pytest.mark.filterwarnings("ignore")
def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in _python_blocks():  # later blocks build on earlier ones
        exec(compile(block.replace("/tmp/", f"{tmp_path}/"), str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "converted" in out and "accuracy" in out  # the reports printed
    assert namespace["y"].shape == (32, 10)
