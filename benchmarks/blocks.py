"""The generated blocks of the README and the documentation pages: tables computed from the committed
``results/``, never copied by hand.

A block sits between two markers, ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, and its NAME says
what it holds:

- ``verdicts-<run>``: the confirmatory verdict table of ``results/<run>/verdicts.csv`` (the table
  ``report --readme`` writes), the effect, its Holm-adjusted interval and the verdict first;
- ``across-<run>``: the cross-family table of ``results/<run>/across.csv``, a column per family (its
  verdict, effect and interval, from ``verdicts.csv``);
- ``replicability-<run>``: which confirmatory verdicts of ``results/<run>/verdicts.csv`` reach a
  replication probability of 0.9 and which are fragile;
- ``replication-<folder>``: the headline and the verdict table of ``results/<folder>/replication.md``
  (``python -m benchmarks replicate`` wrote it);
- ``agreement-<folder>``: the headline paragraph of ``results/<folder>/replication.md`` alone;
- ``environment-<folder>``: one sentence from ``results/<folder>/environment.json``: the wall time, the
  cells, the processes and the machine of the committed run;
- ``claims-<strategy>``: every confirmatory claim about a strategy (its name inside the comparison's
  left side: ``lp_ft``, ``wise``, ``l2_sp``, ``surgical``, ``discriminative``, ``gradual_unfreezing``,
  ``layer_decay``) with its verdict in each committed run that tests it, the paper shortened to its
  citation (:func:`short_citation`);
- ``perf-table``: the summary table of ``results/perf/perf.md``;
- ``api-index``: every public name of ``lrgroups`` (its ``__all__``), of the training driver and of the integrations, with the
  first sentence of its docstring (read statically by griffe, as the API pages are);
- ``deprecations``: every deprecated public name (``lrgroups._deprecated.listed()``) and what
  replaced it.

``python -m benchmarks docs-tables`` rewrites every block of README.md and docs/**/*.md;
``--check`` only reports the stale ones (exit code 1), which is what the tests run.

Example:
    >>> from benchmarks.blocks import generate
    >>> generate("verdicts-quick").splitlines()[0].split(" | ")[:4]
    ['| hypothesis', 'effect', 'Holm-adjusted interval', 'verdict']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from .report import markdown_table, marked_fragile, readme_across_table, readme_table, replicability, with_interval
from .store import atomic_write

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
BLOCK = re.compile(r"(<!-- ([\w.+-]+):start -->\n)(.*?)(<!-- \2:end -->)", re.S)

#: The committed reference runs whose claims the ``claims-<strategy>`` blocks collect.
CLAIM_RUNS = ("quick", "standard")
#: The claims tables: the verdict and what decides it first (they fit the page's width), the paper last.
_CLAIM_COLUMNS = {"run": "run", "hypothesis": "claim", "effect": "effect", "interval": "Holm-adjusted interval",
                  "verdict": "verdict", "replication_probability": "replication probability",
                  "comparison": "comparison", "target": "target", "metric": "metric", "mirrors": "paper"}


def documents(root: Path = ROOT) -> list[Path]:
    """The files whose blocks are generated: README.md and every page under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def generate(name: str, results: Path = RESULTS) -> str:
    """The content of block ``name`` computed from ``results`` (a markdown table, no trailing newline).

    Raises:
        ValueError: ``name`` is no kind of block this module knows.
        FileNotFoundError: the committed file it reads is missing.
    """
    kind, _, argument = name.partition("-")
    if kind == "verdicts" and argument:
        return verdicts_block(results / argument)
    if kind == "across" and argument:
        return across_block(results / argument)
    if kind == "claims" and argument:
        return claims_table(argument, results)
    if kind == "replicability" and argument:
        return replicability(pd.read_csv(results / argument / "verdicts.csv"))
    if kind == "environment" and argument:
        return environment_line(argument, results)
    if kind == "replication" and argument:
        return replication_summary((results / argument / "replication.md").read_text())
    if kind == "agreement" and argument:
        return replication_summary((results / argument / "replication.md").read_text()).split("\n\n")[0]
    if name == "perf-table":
        from .perf.report import with_cuda_row

        return with_cuda_row(perf_table(results / "perf" / "perf.md"), results / "perf" / "gpu" / "perf.json")
    if name == "gpu-plan":
        return gpu_plan_table()
    if name == "api-index":
        return api_index()
    if name == "deprecations":
        from lrgroups._deprecated import listed

        rows = [f"| `{where}` | `{old}` | `{new}` |" for where, old, new in listed()]
        return "\n".join(["| where | deprecated name | use instead |", "|---|---|---|", *rows])
    raise ValueError(f"unknown generated block {name!r}: expected verdicts-<run>, across-<run>, claims-<strategy>, "
                     "replicability-<run>, replication-<folder>, agreement-<folder>, environment-<folder>, perf-table, "
                     "gpu-plan, api-index or deprecations")


def verdicts_block(folder: Path) -> str:
    """The confirmatory verdict table of a run folder's ``verdicts.csv`` (:func:`benchmarks.report.readme_table`)."""
    return readme_table(pd.read_csv(folder / "verdicts.csv")).strip()


def across_block(folder: Path) -> str:
    """The cross-family table of a run folder's ``across.csv`` and ``verdicts.csv``
    (:func:`benchmarks.report.readme_across_table`)."""
    return readme_across_table(pd.read_csv(folder / "across.csv"), pd.read_csv(folder / "verdicts.csv")).strip()


def environment_line(folder: str, results: Path = RESULTS) -> str:
    """How long the committed run in ``results/<folder>`` took, where, and under which load."""
    import json

    e = json.loads((results / folder / "environment.json").read_text())
    start, end = e.get("load_average_start") or [float("nan")], e.get("load_average") or [float("nan")]
    return (f"The committed run `results/{folder}` took {round(e['wall_seconds'])} s for {e['computed']} computed "
            f"cells on {e['device_name']} ({e['workers']} processes of {e['threads_per_cell']} torch thread, "
            f"{e['executor']} executor; 1-minute load average {start[0]:.1f} at the start, {end[0]:.1f} at the "
            f"end): `results/{folder}/environment.json`.")


def replication_summary(report: str) -> str:
    """The headline paragraph and the verdict table of a ``replication.md``."""
    parts = report.split("\n\n")
    table = next((p for p in parts if p.startswith("| hypothesis |")), "")
    return f"{parts[1].strip()}\n\n{table.strip()}"


def claims_table(strategy: str, results: Path = RESULTS) -> str:
    """Every confirmatory claim whose comparison puts ``strategy`` (a substring of a strategy name) on
    the predicted-better side, in each committed reference run of :data:`CLAIM_RUNS`: its verdict per
    experiment (per timm family in the standard suite) and, where a claim is pooled over two families
    or more (``across.csv``), the sign count and the descriptive pooled mean (no verdict).

    Raises:
        ValueError: no committed run tests such a claim.
    """
    rows = []
    for run in CLAIM_RUNS:
        folder = results / run
        if not (folder / "verdicts.csv").exists():
            continue
        frame = pd.read_csv(folder / "verdicts.csv")
        rows.append(marked_fragile(frame[~frame.exploratory.astype(bool)]).assign(run=run))
        if (folder / "across.csv").exists():
            across = pd.read_csv(folder / "across.csv")
            across = across[across.families_in_scope >= 2]
            rows.append(pd.DataFrame({
                "run": run, "hypothesis": across.claim + " pooled", "mirrors": "", "comparison": across.comparison,
                "target": across.families_in_scope.map(lambda n: f"{n} families"), "metric": across.metric,
                "effect": across.pooled_effect, "ci_low": across.pooled_ci_low, "ci_high": across.pooled_ci_high,
                "verdict": "descriptive; " + across.sign_count}))
    table = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=["comparison"])
    better = table.comparison.str.lstrip("(").str.split(" >").str[0]
    table = table[better.str.contains(strategy, regex=False)]
    if table.empty:
        raise ValueError(f"no committed run tests a claim about {strategy!r}")
    table = with_interval(table).assign(mirrors=table.mirrors.fillna("").map(short_citation))
    return markdown_table(table, _CLAIM_COLUMNS).strip()


def short_citation(mirrors: str) -> str:
    """The paper a hypothesis mirrors without what it says: the text up to the last closing
    parenthesis before a colon (``"Kumar et al. 2022 (LP-FT): FT distorts features"`` ->
    ``"Kumar et al. 2022 (LP-FT)"``), or up to the colon (``"control: ..."`` -> ``"control"``).

    Example:
        >>> short_citation("Li et al. 2018 (L2-SP) keeps the solution near the start")
        'Li et al. 2018 (L2-SP)'
    """
    head = mirrors.split(":", 1)[0]
    return head[: head.rfind(")") + 1] if ")" in head else head.strip()


#: The assumed Lite0 training steps (ms, 224 px, batch 64, bf16) the GPU page's plan table shows.
GPU_PLAN_STEPS_MS = (6.0, 12.0, 20.0)


def gpu_plan_table() -> str:
    """The GPU run's plan (:func:`benchmarks.gpu.plan`) at each of GPU_PLAN_STEPS_MS: seconds per
    stage, the total against the device time, and the confirmatory seeds that fit."""
    from .gpu import DEVICE_SECONDS, MIN_CONFIRMATORY_SEEDS, plan

    plans = [plan(ms) for ms in GPU_PLAN_STEPS_MS]
    rows = ["| assumed step | " + " | ".join(plans[0].stages) + " | total | seeds that fit | verdict |",
            "|---|" + "---|" * (len(plans[0].stages) + 3)]
    for p in plans:
        fits = p.seeds_that_fit >= MIN_CONFIRMATORY_SEEDS
        rows.append(f"| {p.step_ms:g} ms | " + " | ".join(f"{v:.0f} s" for v in p.stages.values())
                    + f" | {p.minutes:.1f} of {DEVICE_SECONDS / 60:.0f} min | {p.seeds_that_fit} | "
                    + ("runs" if fits else f"refused (< {MIN_CONFIRMATORY_SEEDS})") + " |")
    return "\n".join(rows)


def perf_table(perf_md: Path) -> str:
    """The ``## Summary`` table of a ``perf.md`` written by ``python -m benchmarks perf``."""
    lines = perf_md.read_text().split("## Summary", 1)[1].strip().splitlines()
    table = lines[:next((i for i, line in enumerate(lines) if not line.startswith("|")), len(lines))]
    return "\n".join(table).strip()


#: Modules whose public classes the API index lists beside ``lrgroups.__all__``.
INTEGRATIONS = ("lrgroups.driver", "lrgroups.integrations.lightning", "lrgroups.integrations.transformers")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


def _first_sentence(docstring: str) -> str:
    text = " ".join(docstring.split("\n\n", 1)[0].split())
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text).replace("``", "`")
    end = re.search(r"\.(\s|$)", text)
    return (text[: end.start()] if end else text).replace("|", "\\|") + "."


def api_index(root: Path = ROOT) -> str:
    """A table per module of every public name: ``lrgroups.__all__`` (each under the module that defines
    it) and the public classes of :data:`INTEGRATIONS`, linked to the API pages, with the first
    sentence of its docstring.

    Raises:
        ValueError: a public name has no docstring.
    """
    import griffe

    package = griffe.load("lrgroups", search_paths=[str(root)], resolve_aliases=True)
    modules: dict[str, list[tuple[str, str]]] = {}
    names = [(f"lrgroups.{n}", n) for n in package.exports or ()]
    for module in INTEGRATIONS:
        names += [(m.path, m.name) for m in package[module.removeprefix("lrgroups.")].members.values()
                  if not m.is_alias and m.is_class and not m.name.startswith("_")]
    for path, name in names:
        obj = package[path.removeprefix("lrgroups.")]
        target = obj.final_target if obj.is_alias else obj
        if target.docstring is None:
            raise ValueError(f"{path} has no docstring")
        home = target.path if target.is_module else target.parent.path
        modules.setdefault(home, []).append((f"[`{name}`][{path}]", _first_sentence(target.docstring.value)))
    lines = []
    for home in sorted(modules):
        lines += [f"### `{home}`", "", "| name | what it is |", "|---|---|"]
        lines += [f"| {link} | {summary} |" for link, summary in modules[home]] + [""]
    return "\n".join(lines).strip()


def blocks(text: str) -> list[tuple[str, str]]:
    """The ``(name, content)`` of every generated block in ``text``, content stripped."""
    return [(m.group(2), m.group(3).strip()) for m in BLOCK.finditer(text)]


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of generated block ``name`` (``verdicts-quick``, ``across-standard``)."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_run_blocks(readme: Path, out: Path, suite_name: str) -> list[str]:
    """Rewrite the ``verdicts-<suite>`` and ``across-<suite>`` blocks of ``readme`` from the tables of
    the run folder ``out`` (``python -m benchmarks report --readme``); returns the blocks written.

    Raises:
        ValueError: the README has neither block.
    """
    make = {f"verdicts-{suite_name}": verdicts_block, f"across-{suite_name}": across_block}
    text = readme.read_text()
    written = [name for name, _ in blocks(text) if name in make]
    if not written:
        start, end = markers(f"verdicts-{suite_name}")
        raise ValueError(f"{readme} has no block of suite {suite_name!r} ({start} ... {end})")
    atomic_write(readme, BLOCK.sub(lambda m: f"{m.group(1)}{make[m.group(2)](out)}\n{m.group(4)}"
                                   if m.group(2) in make else m.group(0), text))
    return written


def rewrite(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block recomputed from ``results``."""
    return BLOCK.sub(lambda m: f"{m.group(1)}{generate(m.group(2), results)}\n{m.group(4)}", text)


def stale(paths: Iterable[Path], results: Path = RESULTS) -> list[str]:
    """``"<file>: <block>"`` for every block whose content differs from what :func:`generate` gives."""
    return [f"{path}: {name}" for path in paths for name, content in blocks(path.read_text())
            if content != generate(name, results)]


def write(paths: Iterable[Path], results: Path = RESULTS) -> list[str]:
    """Rewrite the blocks of ``paths`` in place; returns ``"<file>: <block>"`` for each block changed."""
    paths = list(paths)
    changed = stale(paths, results)
    for path in paths:
        text = path.read_text()
        new = rewrite(text, results)
        if new != text:
            atomic_write(path, new)
    return changed
