"""PyTorch's OptimizerInfo-driven optimizer tests (``test/test_optim.py``, ``optim_db`` from
``torch.testing._internal.common_optimizers``), ported: each test builds its optimizer as torch's
does, ``optim_cls(params, **kwargs)``, through :class:`lrgroups.LayerwiseOptimizer` ("wrapper"
mode, every optimizer, every CPU input and, for the numerics, every CPU implementation variant),
and, to show the port itself holds, on the bare optimizer ("bare" mode, each optimizer's first
input only, to keep CI short).

Kept different by design (each test that meets one says so where it adapts):

* ``add_param_group`` is refused with a pointer to ``unfreeze``: adding groups breaks attached LR
  schedulers; the wrapper creates every group up front.
* Param groups with equal settings are merged (few groups keep foreach/fused kernels batched), so
  ``len(param_groups)`` may be smaller than the number of dicts a test passed; numerics are equal.
* Errors from the structure of a params list (a bare tensor, a tensor twice, named and unnamed
  mixed) cannot arise: the wrapper takes a model, whose parameters are named and distinct.
* A constructor error of the inner optimizer surfaces as ``ValueError("could not build <cls> ...:
  <torch's message>")``, whatever torch's type.
* Every param group has one key more than torch's, ``name`` (a short ASCII label such as
  ``"depth3-nowd"``, which Lightning's ``LearningRateMonitor`` and the HF callback log).
* ``differentiable=True`` is refused when the wrapper is built (``ValueError`` naming it): a
  differentiable step needs non-leaf parameters, which a module's parameters are not; torch's
  differentiable-optimizer tests (gradcheck through ``step``) are not ported.
* ``deepcopy``/pickling copy the wrapper with its inner optimizers (torch copies ``defaults``,
  ``state`` and ``param_groups`` only); hooks, as in torch, are not copied.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch_optim_port import (
    ALL,
    CONSTRUCTION,
    build,
    error_inputs,
    make_closure,
    make_params,
    optim_inputs,
    variants,
)

MODES = ["wrapper", "bare"]


def _cases(with_variants: bool = False):
    """(mode, info, optim_input, variant) for every optimizer and CPU input; bare mode on the first
    input only."""
    cases = []
    for info in ALL:
        for index, optim_input in enumerate(optim_inputs(info)):
            for variant in variants(info) if with_variants else [{}]:
                for mode in MODES:
                    if mode == "bare" and (index or variant != (variants(info)[0] if with_variants else {})):
                        continue
                    case_id = f"{mode}-{info.name}-{optim_input.desc}" + "".join(f"-{k}" for k in variant)
                    cases.append(pytest.param(mode, info, optim_input, variant, id=case_id))
    return cases


CASES = _cases()
VARIANT_CASES = _cases(with_variants=True)


def _kwargs(optim_input, variant=None) -> dict:
    kwargs = dict(optim_input.kwargs)
    kwargs.update(variant or {})
    if isinstance(kwargs.get("lr"), torch.Tensor) and kwargs.get("foreach"):
        kwargs["foreach"] = False  # torch refuses a tensor lr with foreach; torch's tests skip it
    return kwargs


def assert_same(a, b, where="") -> None:
    """Equal nested state: tensors bitwise (``torch.equal``), anything else by ``==``."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _run(info, optimizer, params, steps: int = 3):
    closure = make_closure(info, optimizer, params)
    losses = []
    for _ in range(steps):
        loss = optimizer.step(closure) if info.step_requires_closure else (closure(), optimizer.step())[0]
        losses.append(float(loss.detach()))
    return losses


# ------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("mode, info, optim_input, variant", VARIANT_CASES)
def test_matches_bare_optimizer_bitwise(mode, info, optim_input, variant):
    """Three steps give bitwise the parameters and state of the bare torch optimizer built with
    the same arguments (every CPU implementation variant: for-loop, foreach, fused)."""
    kwargs = _kwargs(optim_input, variant)
    params, reference = make_params(info), make_params(info)
    optimizer = build(mode, info, params, **kwargs)
    bare = info.optim_cls(reference, **kwargs)
    _run(info, optimizer, params)
    _run(info, bare, reference)
    for p, q in zip(params, reference, strict=True):
        assert torch.equal(p, q)
    for p, q in zip(params, reference, strict=True):
        assert_same(optimizer.state[p], bare.state[q])


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_goes_right_direction(mode, info, optim_input, variant):
    """The loss falls (rises under ``maximize``) over a few steps (torch: test_forloop_goes_right_direction)."""
    kwargs = _kwargs(optim_input)
    params = make_params(info)
    optimizer = build(mode, info, params, **kwargs)
    closure = make_closure(info, optimizer, params)
    initial = float(closure().detach())
    for _ in range(5):
        optimizer.step(closure) if info.step_requires_closure else (closure(), optimizer.step())
    final = float(closure().detach())
    if kwargs.get("maximize"):
        assert final > initial
    else:
        assert final < initial


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_tensor_lr_stays_a_tensor(mode, info, optim_input, variant):
    """A tensor lr stays a tensor in every group and steps bitwise as the bare optimizer given the
    same tensor lr (torch: test_tensor_lr)."""
    kwargs = _kwargs(optim_input)
    kwargs["lr"] = torch.tensor(float(kwargs.get("lr", 1e-3)))
    kwargs["foreach"] = False if "foreach" in info.supported_impls else None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    params, reference = make_params(info), make_params(info)
    optimizer = build(mode, info, params, **kwargs)
    assert all(isinstance(group["lr"], torch.Tensor) for group in optimizer.param_groups)
    bare = info.optim_cls(reference, **dict(kwargs, lr=kwargs["lr"].clone()))
    _run(info, optimizer, params)
    _run(info, bare, reference)
    for p, q in zip(params, reference, strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_step_is_noop_when_params_have_no_grad(mode, info, optim_input, variant):
    """Parameters without gradients are left exactly as they were."""
    if info.step_requires_closure:
        pytest.skip("L-BFGS needs a closure that produces gradients")
    params = make_params(info)
    before = [p.detach().clone() for p in params]
    optimizer = build(mode, info, params, **_kwargs(optim_input))
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_param_groups_lr_zero_freezes_a_group(mode, info, optim_input, variant):
    """A group with lr 0 does not move while the other does (torch: test_param_groups_lr)."""
    if not info.supports_param_groups:
        pytest.skip(f"{info.name} takes one param group")
    kwargs = _kwargs(optim_input)
    kwargs.pop("lr", None)
    params = make_params(info)
    before = [p.detach().clone() for p in params]
    optimizer = build(mode, info, [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.0}], lr=0.1, **kwargs)
    _run(info, optimizer, params, steps=2)
    assert not torch.equal(params[0], before[0])
    # Rprop clamps its step sizes to step_sizes[0] > 0, so lr 0 still moves, in torch and through the wrapper
    assert torch.equal(params[1], before[1]) is (info.name != "Rprop")


# ------------------------------------------------------------------------------------ errors
def _error_cases():
    cases = []
    for info in ALL:
        for index, error_input in enumerate(error_inputs(info)):
            params = error_input.optimizer_error_input.params
            structural = (
                isinstance(params, torch.Tensor)
                or "duplicate parameters" in error_input.error_regex
                or "more than one parameter group" in error_input.error_regex
                or "with/without names" in error_input.error_regex
            )
            cases.append(pytest.param(info, error_input, structural, id=f"{info.name}-{index}"))
    return cases


@pytest.mark.parametrize("info, error_input, structural", _error_cases())
def test_errors(info, error_input, structural):
    """Each of torch's error inputs fails through the wrapper with torch's message: constructor
    errors when the wrapper is built, step errors at step. Errors from the structure of a params
    list (a bare tensor, duplicates, names) cannot arise with a model, by design."""
    if structural:
        pytest.skip("by design: the wrapper takes a model, whose parameters are named and distinct")
    given = error_input.optimizer_error_input
    params = given.params if given.params is not None else make_params(info)
    if error_input.error_on == CONSTRUCTION:
        with pytest.raises((ValueError, error_input.error_type), match=error_input.error_regex):
            build("wrapper", info, params, **given.kwargs)
    else:
        for p in params:  # by design a tensor with requires_grad=False is frozen, never stepped
            p.requires_grad_(True)
        optimizer = build("wrapper", info, params, **given.kwargs)
        tensors = [p for group in optimizer.param_groups for p in group["params"]]
        for p in tensors:
            p.grad = torch.rand_like(p)
        with pytest.raises(error_input.error_type, match=error_input.error_regex):
            optimizer.step()


# ------------------------------------------------------------------------------------ state dicts
def _primed(mode, info, optim_input, seed=0):
    params = make_params(info, seed)
    optimizer = build(mode, info, params, **_kwargs(optim_input))
    _run(info, optimizer, params, steps=2)
    return params, optimizer


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_state_dict_deterministic(mode, info, optim_input, variant):
    """Loading a state dict into an optimizer over equal (not identical) parameters and stepping
    both gives equal parameters and equal state dicts; the loaded dict is not modified."""
    params, optimizer = _primed(mode, info, optim_input)
    twins = [p.detach().clone().requires_grad_() for p in params]
    other = build(mode, info, twins, **_kwargs(optim_input))
    state = copy.deepcopy(optimizer.state_dict())
    loaded = copy.deepcopy(state)
    other.load_state_dict(loaded)
    assert_same(loaded, state)
    _run(info, optimizer, params, steps=2)
    _run(info, other, twins, steps=2)
    for p, q in zip(params, twins, strict=True):
        assert torch.equal(p, q)
    assert_same(optimizer.state_dict(), other.state_dict())


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_save_load_with_weights_only(mode, info, optim_input, variant):
    """``torch.save`` then ``torch.load(weights_only=True)`` gives back an equal state dict."""
    _, optimizer = _primed(mode, info, optim_input)
    buffer = io.BytesIO()
    state = optimizer.state_dict()
    torch.save(state, buffer)
    buffer.seek(0)
    assert_same(torch.load(buffer, weights_only=True), state)


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_can_load_older_state_dict(mode, info, optim_input, variant):
    """A state dict saved before newer options existed (without the OptimizerInfo's
    ``not_og_supported_flags``; ``step`` as a float) loads and steps."""
    params, optimizer = _primed(mode, info, optim_input)
    state = copy.deepcopy(optimizer.state_dict())
    for group in state["param_groups"]:
        for key in info.not_og_supported_flags:
            group.pop(key, None)
    for value in state["state"].values():
        if isinstance(value.get("step"), torch.Tensor):
            value["step"] = value["step"].item()
    optimizer.load_state_dict(state)
    _run(info, optimizer, params, steps=1)


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_state_dict_has_torch_layout_with_param_names(mode, info, optim_input, variant):
    """``state`` and ``param_groups`` at the top; in wrapper mode each group names its parameters
    (``param_names``) in the order of its ``params``."""
    _, optimizer = _primed(mode, info, optim_input)
    state = optimizer.state_dict()
    assert {"state", "param_groups"} <= set(state)
    ids = [i for group in state["param_groups"] for i in group["params"]]
    assert set(state["state"]) <= set(ids)
    if mode == "wrapper":
        assert [n for group in state["param_groups"] for n in group["param_names"]] == ["p0", "p1"]


# ------------------------------------------------------------------------------------ hooks
@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_step_hooks_order_and_argument(mode, info, optim_input, variant):
    """Global pre, local pre, local post, global post, each given the optimizer itself (torch:
    test_step_all_hooks); removing the handles stops them."""
    params = make_params(info)
    optimizer = build(mode, info, params, **_kwargs(optim_input))
    seen = []
    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: seen.append(("global pre", o))),
        register_optimizer_step_post_hook(lambda o, a, k: seen.append(("global post", o))),
        optimizer.register_step_pre_hook(lambda o, a, k: seen.append(("pre", o))),
        optimizer.register_step_post_hook(lambda o, a, k: seen.append(("post", o))),
    ]
    try:
        _run(info, optimizer, params, steps=1)
    finally:
        for handle in handles:
            handle.remove()
    assert seen == [("global pre", optimizer), ("pre", optimizer), ("post", optimizer), ("global post", optimizer)]
    _run(info, optimizer, params, steps=1)
    assert len(seen) == 4


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_state_dict_and_load_hooks(mode, info, optim_input, variant):
    """state_dict pre/post hooks and load_state_dict pre/post hooks run, in registration order with
    ``prepend`` honoured; a post hook's returned dict is what state_dict returns; a load pre hook's
    returned dict is what is loaded (torch: test_state_dict_pre_hook, ..._post_hook,
    test_load_state_dict_pre_hook_and_prepend, ..._post_hook)."""
    params, optimizer = _primed(mode, info, optim_input)
    calls = []
    optimizer.register_state_dict_pre_hook(lambda o: calls.append("sd pre"))
    optimizer.register_state_dict_post_hook(lambda o, sd: calls.append("sd post") or {**sd, "marker": 1})
    state = optimizer.state_dict()
    assert state["marker"] == 1 and calls == ["sd pre", "sd post"]

    def pre(o, sd):
        calls.append("load pre")
        sd = copy.deepcopy(sd)
        sd.pop("marker")
        return sd

    optimizer.register_load_state_dict_pre_hook(pre)
    optimizer.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load pre first"), prepend=True)
    optimizer.register_load_state_dict_post_hook(lambda o: calls.append("load post"))
    optimizer.load_state_dict(state)
    assert calls[2:] == ["load pre first", "load pre", "load post"]


# ------------------------------------------------------------------------------------ copies, printing, protocol
@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_deepcopy_and_pickle(mode, info, optim_input, variant):
    """``deepcopy`` keeps every public attribute (torch: test_deepcopy_copies_all_public_attrs);
    a pickled copy has an equal state dict and steps like the original."""
    params, optimizer = _primed(mode, info, optim_input)

    def public(obj):
        return {k for k in obj.__dict__ if not k.startswith("_")}

    assert public(copy.deepcopy(optimizer)) == public(optimizer)
    clone = pickle.loads(pickle.dumps(optimizer))
    assert_same(clone.state_dict(), optimizer.state_dict())
    cloned_params = [p for group in clone.param_groups for p in group["params"]]
    assert len(cloned_params) == len(params)
    assert all(torch.equal(p, q) for p, q in zip(cloned_params, params, strict=True))


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_can_be_printed_and_zero_grad(mode, info, optim_input, variant):
    """``repr`` works; ``zero_grad()`` sets gradients to None (``set_to_none=False``: zeros)."""
    params, optimizer = _primed(mode, info, optim_input)
    assert repr(optimizer)
    make_closure(info, optimizer, params)()
    optimizer.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.to_dense().any() for p in params)
    optimizer.zero_grad()
    assert all(p.grad is None for p in params)


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_has_the_optimizer_attributes_of_a_torch_optimizer(mode, info, optim_input, variant):
    """Every attribute a bare torch optimizer of the class has after construction exists on the
    optimizer with the same type (hook registries, profiling name, flags), ``defaults`` are the
    bare optimizer's, and each group has the bare optimizer's hyperparameters. A torch upgrade that
    adds or changes one fails here, not in user code."""
    kwargs = _kwargs(optim_input)
    bare = info.optim_cls(make_params(info), **kwargs)
    optimizer = build(mode, info, make_params(info), **kwargs)
    base = torch.optim.Optimizer([torch.zeros(1, requires_grad=True)], {})
    torch_attributes = set(vars(base)) | ({"_step_supports_amp_scaling"} & set(vars(bare)))
    for name in sorted(torch_attributes):
        value = getattr(bare, name)
        assert hasattr(optimizer, name), name
        assert type(getattr(optimizer, name)) is type(value), name
    assert optimizer.defaults.keys() == bare.defaults.keys()
    for key, value in bare.defaults.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(optimizer.defaults[key], value)
        else:
            assert optimizer.defaults[key] == value, key
    hyper = {k: v for k, v in bare.param_groups[0].items() if k not in ("params", "param_names")}
    extra = {"name"} if mode == "wrapper" else set()  # by design one more key: the group's readable name
    for group in optimizer.param_groups:
        assert {k: v for k, v in group.items() if k not in ("params", "param_names")}.keys() == hyper.keys() | extra
        assert all(isinstance(group[key], str) for key in extra)


@pytest.mark.parametrize("mode, info, optim_input, variant", [c for c in CASES if c.values[0] == "wrapper"])
def test_add_param_group_is_refused_by_design(mode, info, optim_input, variant):
    """By design: ``add_param_group`` raises with a pointer to ``unfreeze``."""
    optimizer = build(mode, info, make_params(info), **_kwargs(optim_input))
    with pytest.raises(TypeError, match="unfreeze"):
        optimizer.add_param_group({"params": [torch.zeros(2, 2, requires_grad=True)]})


@pytest.mark.parametrize("mode, info, optim_input, variant", CASES)
def test_step_is_profiled_once(mode, info, optim_input, variant):
    """The profiler records one ``Optimizer.step#<class>.step`` per step (the inner optimizer's
    step is not profiled a second time under the wrapper)."""
    params = make_params(info)
    optimizer = build(mode, info, params, **_kwargs(optim_input))
    closure = make_closure(info, optimizer, params)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        optimizer.step(closure) if info.step_requires_closure else (closure(), optimizer.step())
    names = [event.name for event in profile.events() if event.name.startswith("Optimizer.step#")]
    assert names == [f"Optimizer.step#{type(optimizer).__name__}.step"]


@pytest.mark.parametrize("info", [pytest.param(i, id=i.name) for i in ALL if i.supports_complex and not i.only_supports_sparse_grads])
def test_complex_parameters_match_bare(info):
    """A complex parameter steps bitwise as under the bare optimizer (torch: test_complex)."""
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(5, 5, dtype=torch.complex64, generator=generator)
    params, reference = [start.clone().requires_grad_()], [start.clone().requires_grad_()]
    optimizer = build("wrapper", info, params)
    bare = info.optim_cls(reference)
    for step in range(3):
        grad = torch.randn(5, 5, dtype=torch.complex64, generator=generator)
        for p in (params[0], reference[0]):
            p.grad = grad.clone()
        if info.step_requires_closure:
            optimizer.step(lambda: torch.zeros(()))
            bare.step(lambda: torch.zeros(()))
        else:
            optimizer.step()
            bare.step()
    assert torch.equal(params[0], reference[0])
