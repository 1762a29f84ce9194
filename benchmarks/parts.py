"""A part of a suite: the cells of some of its experiments, targets and seeds (``python -m
benchmarks run --experiment NAME --target NAME --seeds 0,1``). An empty selection is the whole
suite. A part's cells keep their keys (the same config as in a full run), so parts run into one
folder add up to the full run, and the report of a part says *not run* for the hypotheses whose
cells have not run yet.

Example:
    >>> from benchmarks.catalog import SUITES
    >>> part = Part(experiments=("q1_surgical",), seeds=(0,))
    >>> part.check(SUITES["smoke"])
    >>> sorted({(c.experiment.name, c.seed) for c in part.select(SUITES["smoke"].cells())})
    [('q1_surgical', 0)]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .suites import Cell, Suite


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,4"`` or ranges ``"0-3"`` (inclusive), mixed: the seeds in the order given, each once.

    Raises:
        ValueError: a part that is not an integer or a range ``a-b`` with ``a <= b``.
    """
    seeds: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        low, dash, high = item.partition("-") if not item.startswith("-") else (item, "", "")
        try:
            values = range(int(low), int(high) + 1) if dash else [int(item)]
        except ValueError:
            raise ValueError(f"seeds {text!r}: {item!r} is not a seed or a range a-b") from None
        if not values:
            raise ValueError(f"seeds {text!r}: the range {item!r} is empty")
        seeds += [s for s in values if s not in seeds]
    return tuple(seeds)


@dataclass(frozen=True)
class Part:
    """The cells of ``experiments`` (names; empty: every experiment), on ``targets`` (names; empty:
    every target) and ``seeds`` (empty: every seed)."""

    experiments: tuple[str, ...] = ()
    targets: tuple[str, ...] = ()
    seeds: tuple[int, ...] = ()

    @property
    def everything(self) -> bool:
        """Whether the part is the whole suite (nothing selected)."""
        return not (self.experiments or self.targets or self.seeds)

    def check(self, suite: Suite) -> None:
        """Fail on a name or seed the suite does not have (among the selected experiments).

        Raises:
            ValueError: an unknown experiment, target or seed, with the known ones listed.
        """
        known = [e.name for e in suite.experiments]
        unknown = [n for n in self.experiments if n not in known]
        if unknown:
            raise ValueError(f"suite {suite.name}: unknown experiments {', '.join(unknown)}; known: {', '.join(known)}")
        chosen = [e for e in suite.experiments if not self.experiments or e.name in self.experiments]
        targets = list(dict.fromkeys(t.name for e in chosen for t in e.targets))
        unknown = [n for n in self.targets if n not in targets]
        if unknown:
            raise ValueError(f"suite {suite.name}: unknown targets {', '.join(unknown)} (in experiments "
                             f"{', '.join(e.name for e in chosen)}); known: {', '.join(targets)}")
        seeds = sorted({s for e in chosen for s in e.seeds})
        unknown_seeds = [s for s in self.seeds if s not in seeds]
        if unknown_seeds:
            raise ValueError(f"suite {suite.name}: unknown seeds {', '.join(map(str, unknown_seeds))} (in experiments "
                             f"{', '.join(e.name for e in chosen)}); known: {', '.join(map(str, seeds))}")
        if not self.select(suite.cells()):
            raise ValueError(f"suite {suite.name}: the selection {self.describe()} has no cells")

    def contains(self, cell: Cell) -> bool:
        return ((not self.experiments or cell.experiment.name in self.experiments)
                and (not self.targets or cell.target.name in self.targets)
                and (not self.seeds or cell.seed in self.seeds))

    def select(self, cells: Iterable[Cell]) -> list[Cell]:
        """The cells of the part, in their order."""
        return [cell for cell in cells if self.contains(cell)]

    def describe(self) -> str:
        """The selection in words (``the whole suite`` when nothing is selected)."""
        if self.everything:
            return "the whole suite"
        parts = [f"{label} {', '.join(map(str, values))}" for label, values in
                 (("experiments", self.experiments), ("targets", self.targets), ("seeds", self.seeds)) if values]
        return "; ".join(parts)
