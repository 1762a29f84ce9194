"""Performance benchmarks of lrgroups (pytest-benchmark; not part of the test suite).

Every figure is a ratio or a time measured side by side with a reference in the same run: step
overhead against the bare inner optimizer, group layout against one group and one group per tensor,
build time against timm's ``create_optimizer_v2``, unfreeze time against ``add_param_group``,
optimizer-state bytes against the bare optimizer, and on CUDA the AdamW step against the
memory-bandwidth floor. ``python -m benchmarks.perf`` runs them all and writes ``results/perf/``.
"""

from .run import main

__all__ = ["main"]
