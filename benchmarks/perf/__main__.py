"""``python -m benchmarks.perf``: run the performance benchmarks and write ``results/perf/``."""

from .run import main

raise SystemExit(main())
