"""What `pip install .` installs: the lrgroups package alone, typed (py.typed), no top-level
`benchmarks` (the suite runs from a checkout), built offline from a copy of the sources."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_holds_lrgroups_alone_with_py_typed(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, source / name)
    for package in ("lrgroups", "benchmarks"):  # benchmarks/ is in the checkout; it must stay out of the wheel
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    code = "from setuptools import build_meta; import sys; print(build_meta.build_wheel(sys.argv[1]))"
    built = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dist")], cwd=source, check=True,
                           capture_output=True, text=True, timeout=300)
    wheel = tmp_path / "dist" / built.stdout.strip().splitlines()[-1]
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"lrgroups"}
    assert "lrgroups/py.typed" in names and "lrgroups/rules.py" in names
