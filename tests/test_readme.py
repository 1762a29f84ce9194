"""Every Python example in the README runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 6


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {"__name__": "__readme__"})


TOML_BLOCKS = re.findall(r"```toml\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(TOML_BLOCKS)))
def test_readme_suite_config_loads_and_dry_runs(index, tmp_path, capsys):
    """Every TOML suite in the README loads with the config checks and lists its cells."""
    from benchmarks.__main__ import main
    from benchmarks.config import load_suite

    path = tmp_path / "suite.toml"
    path.write_text(TOML_BLOCKS[index])
    assert load_suite(path).cells()
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out"), "--dry-run"]) == 0
    assert "pending" in capsys.readouterr().out
