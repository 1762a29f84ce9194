"""Tests for lrgroups.early_stopping: decisions against a plain reference model, restoring, resuming."""

from __future__ import annotations

import doctest
import io
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from lrgroups import early_stopping
from lrgroups.early_stopping import Decision, EarlyStopping, Plateau

NAN, INF = float("nan"), float("inf")
# Multiples of 1/8: every best +- margin below is exact, so ties and values exactly min_delta
# (or min_delta * |best|) from the best come up often and compare without rounding.
GRID = [-1.0, -0.5, 0.0, 0.125, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
VALUES = st.sampled_from(GRID * 3 + [NAN, INF, -INF])


class FakeUnfreezing:
    """The interface EarlyStopping needs of a progressive-unfreezing schedule, and a log of calls."""

    def __init__(self, stages: int) -> None:
        self.stages = stages
        self.reasons: list[str] = []

    @property
    def stages_remaining(self) -> int:
        return self.stages

    def advance(self, reason: str) -> None:
        self.stages -= 1
        self.reasons.append(reason)


def reference(values: list[float], cfg: dict) -> list[tuple]:
    """The documented rules, one check at a time, written as plainly as possible.

    Returns per check: (stop, improved, advanced_stage, cause, best, best_step).
    """
    best, best_step, bad_checks, stages = None, None, 0, cfg["stages"]
    decisions = []
    for i, v in enumerate(values, start=1):
        step = i * cfg["step_scale"]
        finite = not math.isnan(v) and not math.isinf(v)
        margin = cfg["min_delta"]
        if cfg["relative"] and best is not None:
            margin = cfg["min_delta"] * abs(best)
        if not finite:
            improved = False
        elif best is None:
            improved = True
        elif cfg["mode"] == "min":
            improved = v < best - margin
        else:
            improved = v > best + margin
        if improved:
            best, best_step, bad_checks = v, step, 0
        else:
            bad_checks += 1

        diverge, good = cfg["divergence_threshold"], cfg["stopping_threshold"]
        cause = None
        if not finite and cfg["check_finite"]:
            cause = "non_finite"
        elif finite and diverge is not None and (v > diverge if cfg["mode"] == "min" else v < diverge):
            cause = "divergence"
        elif finite and good is not None and (v <= good if cfg["mode"] == "min" else v >= good):
            cause = "stopping_threshold"
        elif bad_checks > 0 and bad_checks >= cfg["patience"]:
            cause = "plateau"

        advanced = False
        if cause == "plateau" and stages > 0 and not cfg["stop_while_stages_remain"]:
            advanced = True
            stages -= 1
            if cfg["reset_patience_on_advance"]:
                bad_checks = 0
        stop = cause is not None and not advanced and step >= cfg["min_steps"]
        decisions.append((stop, improved, advanced, cause if stop or advanced else None, best, best_step))
    return decisions


@st.composite
def configs(draw) -> dict:
    mode = draw(st.sampled_from(["min", "max"]))
    relative = draw(st.booleans())
    stopping = draw(st.none() | st.sampled_from(GRID))
    divergence = draw(st.none() | st.sampled_from(GRID))
    if stopping is not None and divergence is not None and not (
        stopping < divergence if mode == "min" else stopping > divergence
    ):
        stopping = None
    return {
        "mode": mode,
        "patience": draw(st.integers(0, 4)),
        "min_delta": draw(st.sampled_from([0.125, 0.5] if relative else [0.0, 0.25, 0.5])),
        "relative": relative,
        "min_steps": draw(st.sampled_from([0, 3, 6])) * draw(st.sampled_from([1, 10])),
        "stopping_threshold": stopping,
        "divergence_threshold": divergence,
        "check_finite": draw(st.booleans()),
        "stages": draw(st.integers(0, 2)),
        "reset_patience_on_advance": draw(st.booleans()),
        "stop_while_stages_remain": draw(st.booleans()),
        "step_scale": draw(st.sampled_from([1, 10])),
    }


def make_stopper(cfg: dict, **kwargs) -> EarlyStopping:
    return EarlyStopping(
        cfg["mode"],
        cfg["patience"],
        cfg["min_delta"],
        relative=cfg["relative"],
        min_steps=cfg["min_steps"],
        stopping_threshold=cfg["stopping_threshold"],
        divergence_threshold=cfg["divergence_threshold"],
        check_finite=cfg["check_finite"],
        unfreezing=FakeUnfreezing(cfg["stages"]),
        reset_patience_on_advance=cfg["reset_patience_on_advance"],
        stop_while_stages_remain=cfg["stop_while_stages_remain"],
        **kwargs,
    )


def run(stopper: EarlyStopping, values: list[float], cfg: dict, start: int = 1) -> list[Decision]:
    """Steps through ``values``; with step_scale 1 the default step (the count of calls) is used."""
    if cfg["step_scale"] == 1:
        return [stopper.observe(v) for v in values]
    return [stopper.observe(v, step=i * cfg["step_scale"]) for i, v in enumerate(values, start=start)]


def summary(decision: Decision) -> tuple:
    return (
        decision.stop,
        decision.improved,
        decision.advanced_stage,
        decision.cause,
        decision.best,
        decision.best_step,
    )


@settings(max_examples=200, deadline=None)
@given(cfg=configs(), values=st.lists(VALUES, max_size=25))
def test_decisions_equal_reference_model(cfg, values):
    """For any configuration and any metric sequence (ties, NaN/inf, values exactly min_delta from the
    best), every decision -- stop, improved, stage advance, cause, best value and step -- is what the
    reference model of the documented rules decides, and every stop or advance carries a reason."""
    stopper = make_stopper(cfg)
    decisions = run(stopper, values, cfg)
    assert [summary(d) for d in decisions] == reference(values, cfg)
    assert all((d.reason is not None) == (d.stop or d.advanced_stage) for d in decisions)
    assert stopper.unfreezing.stages == cfg["stages"] - sum(d.advanced_stage for d in decisions)


@settings(max_examples=100, deadline=None)
@given(cfg=configs(), values=st.lists(VALUES, max_size=25), data=st.data())
def test_resume_decides_as_uninterrupted(cfg, values, data):
    """Saving the state after any check (through torch.save and torch.load(weights_only=True)) and
    continuing in a fresh EarlyStopping gives exactly the decisions of a run that never stopped."""
    split = data.draw(st.integers(0, len(values)), label="split")
    uninterrupted = run(make_stopper(cfg), values, cfg)

    first = make_stopper(cfg)
    before = run(first, values[:split], cfg)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = make_stopper(cfg)
    resumed.unfreezing.stages = first.unfreezing.stages  # the schedule resumes its own state
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    after = run(resumed, values[split:], cfg, start=split + 1)

    assert [repr(d) for d in before + after] == [repr(d) for d in uninterrupted]


@pytest.mark.parametrize(
    ("mode", "best", "min_delta", "relative", "at_margin", "beyond"),
    [
        ("min", 1.0, 0.25, False, 0.75, 0.625),
        ("max", 1.0, 0.25, False, 1.25, 1.375),
        ("min", 2.0, 0.125, True, 1.75, 1.625),
        ("max", -2.0, 0.125, True, -1.75, -1.625),
    ],
)
def test_exactly_min_delta_is_not_an_improvement(mode, best, min_delta, relative, at_margin, beyond):
    plateau = Plateau(mode, patience=5, min_delta=min_delta, relative=relative)
    assert plateau.observe(best, step=0)
    assert not plateau.observe(best, step=1)
    assert not plateau.observe(at_margin, step=2)
    assert plateau.observe(beyond, step=3)
    assert (plateau.best, plateau.best_step, plateau.checks_since_improvement) == (beyond, 3, 0)


def test_plateau_counts_resets_and_round_trips():
    plateau = Plateau("min", patience=2)
    assert [plateau.observe(v, step) for step, v in enumerate([3.0, 2.0, 2.0])] == [True, True, False]
    assert not plateau.is_plateau
    assert not plateau.observe(NAN, 3)
    assert plateau.is_plateau and plateau.checks_since_improvement == 2
    copy = Plateau("min", patience=2)
    copy.load_state_dict(plateau.state_dict())
    assert copy.state_dict() == plateau.state_dict() and copy.is_plateau
    plateau.reset_patience()
    assert not plateau.is_plateau and (plateau.best, plateau.best_step) == (2.0, 1)
    with pytest.raises(ValueError, match="mode"):
        Plateau("max").load_state_dict(copy.state_dict())


def test_plateau_reason_names_the_numbers():
    stopper = EarlyStopping("min", patience=2, min_delta=1e-3)
    checks = [(1000, 0.5), (1200, 0.231), (1400, 0.2305), (1600, 0.2309)]
    decisions = [stopper.observe(v, step) for step, v in checks]
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert decisions[-1].reason == "no improvement > 0.001 in the last 2 checks (best 0.231 at step 1200)"


def test_stopping_threshold_stops_when_good_enough():
    stopper = EarlyStopping("max", patience=10, stopping_threshold=0.95)
    decisions = [stopper.observe(v) for v in [0.5, 0.9, 0.95]]
    assert [d.stop for d in decisions] == [False, False, True]
    assert decisions[-1].cause == "stopping_threshold"
    assert "0.95" in decisions[-1].reason and "step 3" in decisions[-1].reason


def test_divergence_threshold_stops_when_hopeless():
    stopper = EarlyStopping("min", patience=10, divergence_threshold=10.0)
    decisions = [stopper.observe(v) for v in [2.0, 10.0, 12.5]]
    assert [d.stop for d in decisions] == [False, False, True]
    assert decisions[-1].cause == "divergence"
    assert all(text in decisions[-1].reason for text in ["12.5", "10", "step 3", "best 2 at step 1"])


@pytest.mark.parametrize("bad", [NAN, INF, -INF])
def test_non_finite_stops_unless_told_otherwise(bad):
    decision = EarlyStopping("min", patience=10).observe(bad)
    assert decision.stop and decision.cause == "non_finite" and str(bad) in decision.reason

    tolerant = EarlyStopping("min", patience=2, check_finite=False, divergence_threshold=5.0)
    decisions = [tolerant.observe(v) for v in [1.0, bad, bad]]
    assert [(d.stop, d.improved) for d in decisions] == [(False, True), (False, False), (True, False)]
    assert decisions[-1].cause == "plateau" and decisions[-1].best == 1.0


def test_min_steps_holds_back_every_stop():
    stopper = EarlyStopping("min", patience=1, min_steps=4)
    decisions = [stopper.observe(v) for v in [1.0, NAN, 2.0, 3.0, 0.5, 0.75]]
    assert [d.stop for d in decisions] == [False, False, False, True, False, True]
    assert decisions[3].reason == "no improvement > 0 in the last 3 checks (best 1 at step 1)"


def test_advances_unfreezing_stages_before_stopping():
    unfreezing = FakeUnfreezing(stages=2)
    stopper = EarlyStopping("min", patience=2, unfreezing=unfreezing)
    decisions = [stopper.observe(v) for v in [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]]
    assert [(d.stop, d.advanced_stage) for d in decisions] == [
        (False, False), (False, False), (False, True),  # plateau: stage 1
        (False, False), (False, False), (False, True),  # improved, then plateau again: stage 2
        (False, False), (True, False), (True, False),  # no stages left: stop
    ]
    assert unfreezing.stages == 0
    assert unfreezing.reasons == [decisions[2].reason, decisions[5].reason]
    assert decisions[2].reason == "no improvement > 0 in the last 2 checks (best 1 at step 1)"
    assert decisions[5].best == 0.5 and decisions[5].best_step == 4


def test_reset_patience_on_advance_off_advances_on_every_plateau_check():
    unfreezing = FakeUnfreezing(stages=2)
    stopper = EarlyStopping("min", patience=2, unfreezing=unfreezing, reset_patience_on_advance=False)
    decisions = [stopper.observe(v) for v in [1.0, 1.0, 1.0, 1.0, 1.0]]
    assert [(d.stop, d.advanced_stage) for d in decisions] == [
        (False, False), (False, False), (False, True), (False, True), (True, False)
    ]


def test_stop_while_stages_remain_stops_on_plateau():
    unfreezing = FakeUnfreezing(stages=3)
    stopper = EarlyStopping("min", patience=1, unfreezing=unfreezing, stop_while_stages_remain=True)
    assert [stopper.observe(v).stop for v in [1.0, 1.0]] == [False, True]
    assert unfreezing.stages == 3 and unfreezing.reasons == []


def model_with_buffers() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def perturb(model: nn.Module) -> None:
    """Changes every parameter and buffer, so each step's weights differ from all others."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.add_(torch.randn_like(tensor) if tensor.is_floating_point() else torch.ones_like(tensor))


def bits(state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """Each tensor's dtype, shape and raw bytes: equal iff the tensors are bitwise equal."""
    return {name: (t.dtype, t.shape, t.numpy().tobytes()) for name, t in state.items()}


@pytest.fixture(params=["memory", "file"])
def weights_path(request, tmp_path):
    return None if request.param == "memory" else tmp_path / "best.pt"


def test_restores_bitwise_the_weights_of_the_best_step(weights_path):
    model = model_with_buffers()
    stopper = EarlyStopping("min", patience=3, restore_best=True, model=model, best_weights_path=weights_path)
    snapshots = {}
    for step, loss in enumerate([5.0, 3.0, 4.0, 2.0, 2.5, 2.0, 3.0], start=1):
        perturb(model)
        snapshots[step] = bits(model.state_dict())
        decision = stopper.observe(loss)
        if decision.stop:
            break
    assert decision.stop and decision.restored and decision.best_step == 4 and step == 7
    assert bits(model.state_dict()) == snapshots[4]
    if weights_path is None:
        assert all(t.device.type == "cpu" for t in stopper.state_dict()["best_weights"].values())
    else:
        assert weights_path.exists() and "best_weights" not in stopper.state_dict()


def test_restore_on_request_and_after_resume(weights_path):
    model = model_with_buffers()
    stopper = EarlyStopping("max", patience=5, restore_best=True, model=model, best_weights_path=weights_path)
    with pytest.raises(RuntimeError, match="no best weights"):
        stopper.restore()
    perturb(model)
    stopper.observe(0.7)
    best = bits(model.state_dict())
    perturb(model)
    stopper.observe(0.6)
    buffer = io.BytesIO()
    torch.save(stopper.state_dict(), buffer)
    buffer.seek(0)

    fresh_model = model_with_buffers()
    resumed = EarlyStopping("max", 5, restore_best=True, model=fresh_model, best_weights_path=weights_path)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert bits(fresh_model.state_dict()) != best
    resumed.restore()
    assert bits(fresh_model.state_dict()) == best
    stopper.restore()
    assert bits(model.state_dict()) == best


def test_stale_best_weights_file_is_detected(tmp_path):
    model = model_with_buffers()
    path = tmp_path / "best.pt"
    stopper = EarlyStopping("min", restore_best=True, model=model, best_weights_path=path)
    stopper.observe(1.0)
    state = stopper.state_dict()
    stopper.observe(0.5)  # overwrites the file after the state was saved
    resumed = EarlyStopping("min", restore_best=True, model=model, best_weights_path=path)
    resumed.load_state_dict(state)
    with pytest.raises(RuntimeError, match="step 2, but the best is at step 1"):
        resumed.restore()


def test_state_must_match_where_best_weights_are_kept(tmp_path):
    in_memory = EarlyStopping(restore_best=True, model=model_with_buffers())
    with pytest.raises(ValueError, match="memory"):
        EarlyStopping().load_state_dict(in_memory.state_dict())
    path = tmp_path / "best.pt"
    in_file = EarlyStopping(restore_best=True, model=model_with_buffers(), best_weights_path=path)
    with pytest.raises(ValueError, match="best.pt"):
        in_memory.load_state_dict(in_file.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "lowest"}, "mode"),
        ({"patience": -1}, "patience"),
        ({"patience": 1.5}, "patience"),
        ({"min_delta": -1e-3}, "min_delta"),
        ({"min_delta": NAN}, "min_delta"),
        ({"min_steps": -1}, "min_steps"),
        ({"stopping_threshold": INF}, "stopping_threshold"),
        ({"divergence_threshold": NAN}, "divergence_threshold"),
        ({"mode": "min", "stopping_threshold": 1.0, "divergence_threshold": 1.0}, "better than"),
        ({"mode": "max", "stopping_threshold": 0.5, "divergence_threshold": 0.9}, "better than"),
        ({"restore_best": True}, "restore_best=True but model is None"),
        ({"model": nn.Linear(1, 1)}, "restore_best=False but model is Linear"),
        ({"best_weights_path": "best.pt"}, "best_weights_path"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EarlyStopping(**kwargs)


def test_unfreezing_without_the_interface_raises_type_error():
    with pytest.raises(TypeError, match="stages_remaining"):
        EarlyStopping(unfreezing=object())


def test_docstring_examples_run():
    assert doctest.testmod(early_stopping).failed == 0


class Counter(nn.Module):
    """A module whose extra state is a plain dict (not a tensor), as ``get_extra_state()`` allows."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.seen = {"batches": 0, "tags": ["a"]}

    def forward(self, x):
        self.seen["batches"] += 1
        self.seen["tags"].append("b")
        return self.linear(x)

    def get_extra_state(self):
        return self.seen

    def set_extra_state(self, state):
        self.seen = state


@pytest.mark.parametrize("in_file", [False, True])
def test_restore_best_keeps_non_tensor_state_dict_entries(tmp_path, in_file):
    """restore_best=True on a model whose get_extra_state() returns a dict (issue 11: it failed with
    "'dict' object has no attribute 'to'"): the extra state of the best check is kept as a copy
    (later changes to the model's object do not reach it), restored with the weights, and the state
    dict of the stopper loads with weights_only=True."""
    model = Counter()
    path = tmp_path / "best.pt" if in_file else None
    stopper = EarlyStopping("min", patience=2, restore_best=True, model=model, best_weights_path=path)
    model(torch.ones(1, 2))
    stopper.observe(1.0)  # best: batches 1
    best_weight = model.linear.weight.detach().clone()
    for loss in (2.0, 3.0):
        with torch.no_grad():
            model.linear.weight.add_(1.0)
        model(torch.ones(1, 2))
        decision = stopper.observe(loss)
    assert decision.stop and decision.restored
    assert model.seen == {"batches": 1, "tags": ["a", "b"]}
    assert torch.equal(model.linear.weight, best_weight)
    model(torch.ones(1, 2))  # the restored object is the model's own: changing it does not change the kept copy
    stopper.restore()
    assert model.seen == {"batches": 1, "tags": ["a", "b"]}
    saved = tmp_path / "stopper.pt"
    torch.save(stopper.state_dict(), saved)
    resumed = EarlyStopping("min", patience=2, restore_best=True, model=Counter(), best_weights_path=path)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    resumed.restore()
    assert resumed.model.seen == {"batches": 1, "tags": ["a", "b"]}


def test_the_best_value_and_its_step_are_the_stoppers_own_attributes():
    stopper = EarlyStopping("max", patience=2)
    assert stopper.best is None and stopper.best_step is None
    for step, value in enumerate([0.5, 0.7, 0.6], start=1):
        stopper.observe(value, step)
    assert (stopper.best, stopper.best_step) == (0.7, 2) == (stopper.plateau.best, stopper.plateau.best_step)


def test_observe_defaults_step_to_the_count_of_checks_and_the_count_resumes():
    """observe(metric) with no step records the check at 1, 2, ... for a Plateau and an EarlyStopping
    alike; EarlyStopping.calls is its plateau's count, and both survive a state round trip (a state
    saved before Plateau kept the count loads as 0 checks)."""
    plateau = Plateau("min", patience=1)
    assert [plateau.observe(v) for v in (3.0, 2.0, 2.5)] == [True, True, False]
    assert (plateau.checks, plateau.best_step) == (3, 2)
    again = Plateau("min", patience=1)
    again.load_state_dict(plateau.state_dict())
    assert again.checks == 3 and again.observe(1.0) and again.best_step == 4
    legacy = {k: v for k, v in plateau.state_dict().items() if k != "checks"}
    again.load_state_dict(legacy)
    assert again.checks == 0

    stopper = EarlyStopping("max", patience=2)
    decisions = [stopper.observe(torch.tensor(v)) for v in (0.5, 0.7, 0.6)]
    assert [d.step for d in decisions] == [1, 2, 3] and stopper.calls == stopper.plateau.checks == 3
    resumed = EarlyStopping("max", patience=2)
    resumed.load_state_dict(stopper.state_dict())
    assert resumed.calls == 3 and resumed.observe(0.6).step == 4 and resumed.observe(0.6).stop


def test_an_explicit_step_is_recorded_and_still_counts_a_check():
    stopper = EarlyStopping("min", patience=5)
    assert stopper.observe(1.0, step=100).best_step == 100
    assert stopper.observe(0.5).step == 2 and stopper.best_step == 2
