"""Freezing, hot-add equivalence under every scheduler, progressive unfreezing, norm policy."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm.optim
import timm.scheduler
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from strategies import DETRLike, TiedLM, module_trees, rule_lists

import lrgroups
from lrgroups.depth import TiedWeightsWarning

# Random trees and lazily built convnets cannot be run on a built input: their depths follow
# registration order, with a DepthWarning that is expected here (tests/test_depth.py checks it).
pytestmark = pytest.mark.filterwarnings("ignore::lrgroups.depth.DepthWarning")

S = torch.optim.lr_scheduler
STEPS = 8

# name -> (factory(opt) -> scheduler, how to step it)
SCHEDULERS = {
    "LambdaLR": lambda opt: S.LambdaLR(opt, lambda step: 0.9**step),
    "MultiplicativeLR": lambda opt: S.MultiplicativeLR(opt, lambda step: 0.95),
    "StepLR": lambda opt: S.StepLR(opt, step_size=2, gamma=0.5),
    "MultiStepLR": lambda opt: S.MultiStepLR(opt, milestones=[2, 5], gamma=0.3),
    "ConstantLR": lambda opt: S.ConstantLR(opt, factor=0.5, total_iters=3),
    "LinearLR": lambda opt: S.LinearLR(opt, start_factor=0.2, total_iters=4),
    "ExponentialLR": lambda opt: S.ExponentialLR(opt, gamma=0.9),
    "PolynomialLR": lambda opt: S.PolynomialLR(opt, total_iters=6, power=2.0),
    "CosineAnnealingLR": lambda opt: S.CosineAnnealingLR(opt, T_max=6, eta_min=1e-5),
    "CosineAnnealingWarmRestarts": lambda opt: S.CosineAnnealingWarmRestarts(opt, T_0=3),
    "CyclicLR": lambda opt: S.CyclicLR(opt, base_lr=opt.per_group(1e-3), max_lr=opt.per_group(1e-2), step_size_up=2),
    "OneCycleLR": lambda opt: S.OneCycleLR(opt, max_lr=opt.per_group(1e-2), total_steps=STEPS + 1),
    "SequentialLR": lambda opt: S.SequentialLR(
        opt, [S.LinearLR(opt, start_factor=0.1, total_iters=3), S.ExponentialLR(opt, gamma=0.8)], milestones=[3]
    ),
    "ChainedScheduler": lambda opt: S.ChainedScheduler(
        [S.ConstantLR(opt, factor=0.5, total_iters=2), S.ExponentialLR(opt, gamma=0.9)]
    ),
    "ReduceLROnPlateau": lambda opt: S.ReduceLROnPlateau(opt, patience=1, factor=0.5),
    "timm.CosineLRScheduler": lambda opt: timm.scheduler.CosineLRScheduler(
        opt, t_initial=STEPS, warmup_t=2, warmup_lr_init=0.0
    ),
    "timm.StepLRScheduler": lambda opt: timm.scheduler.StepLRScheduler(opt, decay_t=3, decay_rate=0.5),
}
METRICS = [1.0, 0.9, 0.95, 0.97, 0.99, 0.98, 1.0, 1.1, 1.2]


def _advance(scheduler, step):
    if isinstance(scheduler, S.ReduceLROnPlateau):
        scheduler.step(METRICS[step])
    elif isinstance(scheduler, timm.scheduler.scheduler.Scheduler):
        scheduler.step_update(step + 1)
        scheduler.step(step + 1)
    else:
        scheduler.step()


def _grads(tree, step):
    """The same pseudo-random gradient for a parameter in every run, whoever else has one."""
    for index, (name, param) in enumerate(tree.named_parameters()):
        generator = torch.Generator().manual_seed(1000 * step + index)
        grad = torch.randn(param.shape, generator=generator)
        param.grad = grad if param.requires_grad else None


def _run(tree, rules, factory, scheduler_name, selector, k, hot):
    """Train STEPS steps with synthetic gradients. With ``hot`` the ``selector`` parameters start
    frozen and are unfrozen at step ``k``; otherwise they are in the optimizer from step 0 with no
    gradient until ``k``. Returns the lr of every group at every step."""
    frozen_rule = [lrgroups.Rule(**selector, frozen=True)] if hot else []
    opt = lrgroups.LayerwiseOptimizer(tree, factory, lr=1e-2, weight_decay=0.05, rules=rules + frozen_rule)
    scheduler = SCHEDULERS[scheduler_name](opt)
    chosen = {info.name for info in lrgroups.rules.describe(tree) if lrgroups.Selector(**selector).matches(info)}
    trajectory = []
    for step in range(STEPS):
        if hot and step == k:
            opt.unfreeze(**selector)
        _grads(tree, step)
        if not hot and step < k:
            for name, param in tree.named_parameters():
                if name in chosen:
                    param.grad = None
        opt.step()
        _advance(scheduler, step)
        trajectory.append([group["lr"] for group in opt.param_groups])
    return trajectory


@given(
    st.data(),
    st.sampled_from(sorted(SCHEDULERS)),
    st.sampled_from(["adamw", "sgd"]),
    st.integers(0, STEPS - 1),
)
def test_hot_add_equivalence_under_every_scheduler(data, scheduler_name, optimizer, k):
    """Unfreezing parameters P at step k gives, group by group and step by step, the same lr as a
    run in which P sat in the optimizer from step 0 with no gradient until k, and bitwise the same
    parameters, under every torch and timm scheduler, with no extra call."""
    tree = data.draw(module_trees())
    max_depth = max(lrgroups.param_depths(tree).values())
    rules = [r for r in data.draw(rule_lists(max_depth)) if r.frozen is None]
    selector = {"depth": (None, data.draw(st.integers(0, max_depth)))}
    factory = {"adamw": torch.optim.AdamW, "sgd": lambda groups, **kw: torch.optim.SGD(groups, momentum=0.9, **kw)}[
        optimizer
    ]
    reference_tree = copy.deepcopy(tree)
    hot = _run(tree, rules, factory, scheduler_name, selector, k, hot=True)
    cold = _run(reference_tree, rules, factory, scheduler_name, selector, k, hot=False)
    assert hot == cold
    for (name, a), b in zip(tree.named_parameters(), reference_tree.parameters(), strict=True):
        assert torch.equal(a, b), name


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)
    )


def test_progressive_unfreezing_by_steps_head_first_then_deepest():
    """Default stages: the head trains alone, then the deepest block, then earlier ones."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=2)
    assert [p.requires_grad for p in model.parameters()] == [False] * 6 + [True] * 2
    unfrozen = [(opt.step(), schedule.step())[1] for _ in range(8)]  # steps with no gradient: updates all the same
    assert unfrozen == [[], ["4.weight", "4.bias"], [], ["2.weight", "2.bias"], [], ["0.weight", "0.bias"], [], []]
    assert schedule.stages_remaining == 0
    assert [h["stage"] for h in schedule.history] == [1, 2, 3]
    assert len(opt.param_groups) == 4


def test_progressive_unfreezing_on_plateau_and_state_dict_roundtrip():
    """A plateau of the monitored metric advances the stage; the schedule's state dict resumes the
    same decisions."""
    metrics = [1.0, 0.8, 0.81, 0.82, 0.7, 0.75, 0.76, 0.77, 0.78]
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, plateau=lrgroups.Plateau("min", patience=2))
    decisions = [bool(schedule.observe(m)) for m in metrics]
    assert decisions == [False, False, False, True, False, False, True, False, True]
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    first = lrgroups.ProgressiveUnfreezing(opt, plateau=lrgroups.Plateau("min", patience=2))
    resumed_decisions = [bool(first.observe(m)) for m in metrics[:5]]
    state = first.state_dict()
    second = lrgroups.ProgressiveUnfreezing(opt, plateau=lrgroups.Plateau("min", patience=2))
    second.load_state_dict(state)
    resumed_decisions += [bool(second.observe(m)) for m in metrics[5:]]
    assert resumed_decisions == decisions


def test_warmup_ramps_new_stage_lr_inside_step_only():
    """With warmup_steps=4 the groups that receive a new stage step at 1/4, 2/4, 3/4, 4/4 of their
    scheduled lr; group lrs seen between steps (by schedulers) are untouched."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    schedule = lrgroups.ProgressiveUnfreezing(opt, warmup_steps=4)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append(o.param_groups[2]["lr"]))
    schedule.advance("test")
    for _ in range(5):
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
        assert opt.param_groups[2]["lr"] == 0.05
    assert seen == pytest.approx([0.0125, 0.025, 0.0375, 0.05, 0.05])


def test_early_stopping_advances_unfreezing_before_stopping():
    """EarlyStopping composed with ProgressiveUnfreezing advances stages on a plateau and stops
    only when no stage remains."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt)
    stopper = lrgroups.EarlyStopping("min", patience=1, unfreezing=schedule)
    decisions = [stopper.observe(m) for m in [1.0, 1.0, 1.0, 1.0, 1.0]]
    assert [d.stop for d in decisions] == [False, False, False, False, True]
    assert schedule.stages_remaining == 0


def test_warmup_counts_per_group_when_stages_overlap():
    """A stage unfrozen while another group is still warming up does not cut that warm-up short:
    each group ramps over its own warmup_steps."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    schedule = lrgroups.ProgressiveUnfreezing(opt, warmup_steps=4)
    seen = []
    opt.register_step_pre_hook(lambda o, a, k: seen.append((o.param_groups[2]["lr"], o.param_groups[1]["lr"])))
    schedule.advance("first")
    for step in range(4):
        if step == 1:
            schedule.advance("second")
        model(torch.randn(3, 4)).sum().backward()
        opt.step()
    assert [a for a, _ in seen] == pytest.approx([0.0125, 0.025, 0.0375, 0.05])
    assert [b for _, b in seen[1:]] == pytest.approx([0.00625, 0.0125, 0.01875])


# ---------------------------------------------------------------- issue 11: what the user froze, resume, real shapes


def _trainable(model):
    return {name for name, p in model.named_parameters() if p.requires_grad}


def test_user_frozen_box_head_stays_frozen_through_default_stages():
    """DETR-like model, ``bbox_embed.requires_grad_(False)`` before building, default stages: the
    first stage trains the class head only (the heads are on top, the backbone is not), every later
    stage thaws what the schedule froze, and the box head is never thawed (issue 11: thawed silently);
    an explicit opt.unfreeze still thaws it."""
    model = DETRLike()
    model.bbox_embed.requires_grad_(False)
    box = {n for n, _ in model.named_parameters() if n.startswith("bbox_embed.")}
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-4, rules=[lrgroups.layer_decay(0.5)])
    schedule = lrgroups.ProgressiveUnfreezing(opt)
    assert _trainable(model) == {"class_embed.weight", "class_embed.bias"}
    assert box.isdisjoint(schedule.owned)
    assert {opt.frozen_by(name) for name in box} == {"model"}
    assert {opt.frozen_by(name) for name in schedule.owned} == {"schedule"}
    while schedule.stages_remaining:
        thawed = schedule.advance()
        assert thawed and box.isdisjoint(thawed)
    assert _trainable(model) == {n for n, _ in model.named_parameters()} - box
    assert opt.unfreeze("bbox_embed.*") == sorted(box, key=[n for n, _ in model.named_parameters()].index)


@given(module_trees(), st.randoms())
def test_schedule_thaws_only_what_it_froze(tree, random):
    """Whatever the user froze before building (a random subset), running every stage of the
    default schedule leaves exactly that subset frozen and everything else trainable; the schedule
    owns exactly the trainable parameters below the top depth."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        user_frozen = {name for name, p in tree.named_parameters() if random.random() < 0.3}
        for name, p in tree.named_parameters():
            p.requires_grad_(name not in user_frozen)
        opt = lrgroups.LayerwiseOptimizer(tree, torch.optim.SGD, lr=0.1)
        top = max(row.depth for row in opt.plan)
        schedule = lrgroups.ProgressiveUnfreezing(opt)
    assert set(schedule.owned) == {row.name for row in opt.plan if row.depth < top and row.name not in user_frozen}
    while schedule.stages_remaining:
        schedule.advance()
    assert {row.name for row in opt.plan if row.frozen} == {name for name, _ in tree.named_parameters()} & user_frozen


def test_stage_that_thaws_nothing_warns():
    """A stage whose parameters were all frozen by the user thaws nothing: a loud warning, not a
    silent no-op."""
    model = _mlp()
    model[2].requires_grad_(False)
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    with pytest.warns(UserWarning, match="stage 2 thaws nothing.*2.weight"):
        lrgroups.ProgressiveUnfreezing(opt)


def test_tied_lm_ulmfit_gradual_unfreezing_trains_tied_tensor_first():
    """ULMFiT on a tied LM (discriminative rates lr/2.6 per layer, gradual unfreezing a layer per
    epoch): the tied embedding/decoder tensor is the head, at the base lr, trained from the first
    stage as fastai's split does (issue 11: depth 0, 6.25e-5, frozen until the last stage);
    tied='embedding' puts it in the last stage at the lowest lr."""
    model = TiedLM()
    with pytest.warns(TiedWeightsWarning, match="'encoder.weight'.*'decoder.weight'"):
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(1 / 2.6)])
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)
    assert _trainable(model) == {"encoder.weight", "decoder.bias"}
    assert opt.param_groups[opt.group_of("encoder.weight")]["lr"] == 1e-3
    assert [schedule.end_epoch() for _ in range(3)] == [
        [f"rnns.2.{n}" for n, _ in model.rnns[2].named_parameters()],
        [f"rnns.1.{n}" for n, _ in model.rnns[1].named_parameters()],
        [f"rnns.0.{n}" for n, _ in model.rnns[0].named_parameters()],
    ]
    model = TiedLM()
    opt = lrgroups.LayerwiseOptimizer(
        model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(1 / 2.6)], tied="embedding"
    )
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_epochs=1)
    assert _trainable(model) == {"decoder.bias"}
    assert [schedule.end_epoch() for _ in range(4)][-1] == ["encoder.weight"]
    assert opt.explain().set_index("name").lr["encoder.weight"] == pytest.approx(1e-3 / 2.6**4)


def _run_stages(model, schedule_state=None, load_optimizer=None, before=False):
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.layer_decay(0.5)])
    if load_optimizer is not None and before:
        opt.load_state_dict(load_optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=1)
    if load_optimizer is not None and not before:
        opt.load_state_dict(load_optimizer)
    if schedule_state is not None:
        schedule.load_state_dict(schedule_state)
    return opt, schedule


@pytest.mark.parametrize("optimizer_checkpoint", ["rejected", "loaded_before", "loaded_after"])
def test_resume_at_last_stage_reconciles_frozen_set(optimizer_checkpoint):
    """Resume after every stage was unfrozen: with a fresh optimizer (its checkpoint rejected, say),
    or with the optimizer checkpoint loaded before or after the schedule is built, the schedule's
    load_state_dict makes the frozen set that of its stage (issue 11: stage 3 of 3 but the earlier
    stages stayed frozen, silently); a parameter the user froze stays frozen in every case."""
    model = _mlp()
    model[0].bias.requires_grad_(False)
    opt, schedule = _run_stages(model)
    for _ in range(3):
        opt.step()
        schedule.step()
    assert schedule.stages_remaining == 0
    saved_schedule, saved_opt = schedule.state_dict(), opt.state_dict()
    expected = [row.frozen for row in opt.plan]
    assert expected == [False, True] + [False] * 6
    fresh = _mlp()
    fresh[0].bias.requires_grad_(False)
    load = None if optimizer_checkpoint == "rejected" else saved_opt
    opt, schedule = _run_stages(fresh, saved_schedule, load, before=optimizer_checkpoint == "loaded_before")
    assert [row.frozen for row in opt.plan] == expected and schedule.stages_remaining == 0


def test_resume_conflict_over_ownership_raises_and_changes_nothing():
    """The saved schedule thawed a parameter that the user froze before building the resumed one:
    a ValueError naming it, the frozen set unchanged."""
    model = _mlp()
    opt, schedule = _run_stages(model)
    for _ in range(3):
        opt.step()
        schedule.step()
    saved = schedule.state_dict()
    fresh = _mlp()
    fresh[2].weight.requires_grad_(False)
    opt, schedule = _run_stages(fresh)
    before = [row.frozen for row in opt.plan]
    with pytest.raises(ValueError, match="2.weight: the saved schedule thawed it at stage 2"):
        schedule.load_state_dict(saved)
    assert [row.frozen for row in opt.plan] == before and schedule.stage == 0


def test_schedule_built_again_on_the_same_model_takes_over_what_a_schedule_froze():
    """A second optimizer and schedule on a model an earlier schedule froze (a re-run notebook cell)
    take over the parameters that schedule froze, and still leave the user's frozen ones alone."""
    model = _mlp()
    model[0].bias.requires_grad_(False)
    _run_stages(model)
    opt, schedule = _run_stages(model)
    assert set(schedule.owned) == {"0.weight", "2.weight", "2.bias", "4.weight", "4.bias"}
    for _ in range(3):
        opt.step()
        schedule.step()
    assert [name for name, p in model.named_parameters() if not p.requires_grad] == ["0.bias"]


def test_rule_frozen_parameter_is_never_thawed_by_a_schedule():
    """A parameter frozen by a frozen=True rule stays frozen through every stage of the default
    schedule; the rest of its stage thaws."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, rules=[lrgroups.Rule("2.bias", frozen=True)])
    schedule = lrgroups.ProgressiveUnfreezing(opt)
    assert "2.bias" not in schedule.owned
    assert [schedule.advance() for _ in range(3)][1] == ["2.weight"]
    assert [row.name for row in opt.plan if row.frozen] == ["2.bias"]


def test_detr_like_first_stage_trains_every_head():
    """DETR-like model, default stages: the first stage trains the class head and the whole box MLP
    (issue 11: it trained the backbone's last layers, registered last), the last stage the stem."""
    model = DETRLike()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-4, rules=[lrgroups.layer_decay(0.5)])
    schedule = lrgroups.ProgressiveUnfreezing(opt)
    assert _trainable(model) == {
        n for n, _ in model.named_parameters() if n.startswith(("class_embed.", "bbox_embed."))
    }
    while schedule.stages_remaining > 1:
        schedule.advance()
    assert schedule.advance() == ["backbone.0.weight", "backbone.0.bias", "backbone.1.weight", "backbone.1.bias"]


def test_a_warm_up_schedule_owns_its_step_hooks():
    """ProgressiveUnfreezing with a warm-up installs two step hooks, and one post hook that counts updates;
    close() removes them, and so does dropping the schedule (the hooks hold it weakly, so it does not stay
    alive through the optimizer)."""
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    hooks = len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)
    schedule = lrgroups.ProgressiveUnfreezing(opt, warmup_steps=3)
    assert (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == (hooks[0] + 1, hooks[1] + 2)
    schedule.close()
    assert (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == hooks
    schedule = lrgroups.ProgressiveUnfreezing(opt, warmup_steps=3)
    alive = weakref.ref(schedule)
    del schedule
    gc.collect()
    assert alive() is None and (len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)) == hooks


def test_observe_takes_a_step_and_a_plateau_as_a_dict():
    """ProgressiveUnfreezing.observe(metric, step=None): the plateau records the check at ``step``
    (default: the schedule's count of updates) and the names a plateau thawed are returned."""
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, plateau={"mode": "max", "patience": 1})
    assert schedule.observe(torch.tensor(0.5), step=40) == [] and schedule.plateau.best_step == 40
    assert schedule.observe(0.4) == ["0.weight", "0.bias"] and schedule.stage == 1
    assert schedule.observe(0.9) == [] and schedule.plateau.best_step == schedule.steps == 0
    with pytest.raises(TypeError, match="unknown arguments 'paitence'"):
        lrgroups.ProgressiveUnfreezing(opt, plateau={"paitence": 1})
