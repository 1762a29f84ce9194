"""Ownership: no module-global registry of objects in lrgroups; every hook lrgroups installs is
removable through a handle its owner keeps; one module hooks norm layers; the behaviour the old
registries (``_NORM_OWNER``, ``_FROZEN_BY_SCHEDULES``) gave, now from owned state."""

from __future__ import annotations

import ast
import gc
import importlib
import pkgutil
import re
import weakref
from pathlib import Path

import torch
import torch.nn as nn

import lrgroups

PACKAGE = Path(lrgroups.__file__).parent
# A memo of derived values (the forward trace of a model, by model, weakly), not a record of who owns
# what: it installs nothing and changes no behaviour but how often the model's forward runs.
CACHES = {("lrgroups.tracing", "_TRACES")}
_DATA = (str, bytes, int, float, bool, type(None), type, tuple, frozenset)


def _modules():
    for info in pkgutil.walk_packages([str(PACKAGE)], "lrgroups."):
        if info.name.startswith(("lrgroups.integrations.lightning", "lrgroups.integrations.transformers")):
            continue  # they import their frameworks; their sources are checked below
        yield importlib.import_module(info.name)


def test_no_module_global_registry_of_objects():
    """No module of lrgroups keeps a module-level weak dictionary or set, or a mutable container of
    objects (anything but plain data, functions and classes), that calls fill at run time."""
    found = []
    for module in _modules():
        for name, value in vars(module).items():
            if (module.__name__, name) in CACHES or name.startswith("__"):
                continue
            if isinstance(value, (weakref.WeakKeyDictionary, weakref.WeakValueDictionary, weakref.WeakSet)):
                found.append(f"{module.__name__}.{name}")
            elif isinstance(value, (dict, list, set)) and not isinstance(value, tuple):
                entries = list(value.items()) if isinstance(value, dict) else [(v, None) for v in value]
                for key, item in entries:
                    if not all(isinstance(x, _DATA) or callable(x) and hasattr(x, "__qualname__") for x in (key, item)):
                        found.append(f"{module.__name__}.{name}")
                        break
    assert found == []


def test_nothing_lrgroups_holds_keeps_a_dropped_model_optimizer_or_schedule_alive():
    """No registry holds on to what the user dropped: an optimizer (its norm hooks installed, a step
    taken) and a schedule are collected once dropped while the model lives on, with or without
    close(); the model, its norm layer, optimizer and schedule together once all are dropped."""
    model = _bn_model()
    for close in (False, True):
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
        schedule = lrgroups.ProgressiveUnfreezing(opt)
        model(torch.randn(2, 3)).sum().backward()
        opt.step()
        refs = [weakref.ref(opt), weakref.ref(schedule)]
        if close:
            opt.close()
        del opt, schedule
        gc.collect()
        assert [ref() for ref in refs] == [None, None], f"close={close}"
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    refs = [weakref.ref(x) for x in (model, model[1], opt, lrgroups.ProgressiveUnfreezing(opt))]
    del model, opt
    gc.collect()
    assert [ref() for ref in refs] == [None] * 4


def _hook_calls(text: str) -> list[tuple[str, bool]]:
    """(method, whether its handle is kept: assigned, appended, returned or held in a list) for
    every ``register_*hook`` call in a source file."""
    tree = ast.parse(text)
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and re.fullmatch(
                r"register_\w*hook", node.func.attr):
            parent = parents[node]
            kept = not isinstance(parent, ast.Expr)
            calls.append((node.func.attr, kept))
    return calls


def test_every_hook_lrgroups_installs_has_a_kept_handle_and_only_norms_hooks_norm_layers():
    """Every register_*hook call in lrgroups keeps the handle it returns (none is a bare
    statement); forward hooks are installed by lrgroups.norms (norm layers), the temporary forward
    trace (lrgroups.tracing) and head_features' one-call probe (lrgroups.probe), each removed in a finally."""
    forward = set()
    for path in PACKAGE.rglob("*.py"):
        for method, kept in _hook_calls(path.read_text()):
            assert kept, f"{path.name}: a {method} whose handle is dropped"
            if method.startswith("register_forward"):
                forward.add(path.name)
    assert forward <= {"norms.py", "tracing.py", "probe.py"}
    assert "norms.py" in forward


def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def _stats_move(model):
    before = model[1].running_mean.clone()
    model.train()(torch.randn(8, 3))
    return not torch.equal(before, model[1].running_mean)


def test_two_optimizers_over_one_model_the_newest_decides_and_closing_hands_back():
    model = _bn_model()
    frozen = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("1.*", frozen=True)])
    assert not _stats_move(model)
    model[1].requires_grad_(True)
    training = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    assert _stats_move(model)
    training.close()
    assert not _stats_move(model)
    frozen.close()
    assert _stats_move(model) and not model[1]._forward_pre_hooks and not model[1]._forward_hooks


def test_a_schedule_on_a_rebuilt_optimizer_takes_over_and_frozen_by_reports_it():
    """What a schedule froze is recorded on the tensor (no registry): a schedule built on a new
    optimizer over the same model takes it over, and frozen_by reports it as the schedule's, not as
    frozen before the optimizer was built; what the user froze stays the user's."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    model[0].bias.requires_grad_(False)
    first = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    lrgroups.ProgressiveUnfreezing(first)
    assert first.frozen_by("0.weight") == "schedule" and first.frozen_by("0.bias") == "model"
    second = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(second)
    assert second.frozen_by("0.weight") == "schedule" and second.frozen_by("2.weight") == "schedule"
    assert second.frozen_by("0.bias") == "model" and "0.bias" not in schedule.owned
    while schedule.stages_remaining:
        schedule.advance()
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["0.bias"]
    assert not hasattr(model[0].weight, "_lrgroups_frozen_by_a_schedule")
