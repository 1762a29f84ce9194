"""Helpers shared by the benchmark tests that run real cells."""

from __future__ import annotations


def prepared(experiment, tmp_path_factory):
    """(cache, key environment, device) with ``experiment``'s preparations (source pretraining,
    feature caches, probes) built into a fresh tmp cache on one CPU thread, for tests that run its
    cells."""
    from benchmarks.caches import ensure
    from benchmarks.cells import key_environment
    from benchmarks.runner import preparations
    from benchmarks.training import resolve_device

    device = resolve_device("cpu", threads=1)
    cache, environment = tmp_path_factory.mktemp("cache"), key_environment(device)
    for wave in preparations((experiment,)):
        for preparation in wave:
            ensure(preparation, cache, environment, device)
    return cache, environment, device
