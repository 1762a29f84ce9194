"""accelerate (prepare / save_state / load_state), the ratio check through load_state_dict, the
BatchNorm default under peft, and lazy imports of the integrations."""

from __future__ import annotations

import subprocess
import sys
import warnings

import accelerate
import pytest
import torch
import torch.nn as nn

import lrgroups


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


def _build(one_cycle_max_lr=None):
    model = _model()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-2, rules=[lrgroups.layer_decay(0.5)],
                                      example_input=torch.zeros(1, 4))
    schedule = lrgroups.ProgressiveUnfreezing(opt, stages=["4.*", "2.*", "0.*"])
    max_lr = opt.per_group(1e-2) if one_cycle_max_lr is None else one_cycle_max_lr
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=20)
    return model, opt, schedule, scheduler


def _steps(accelerator, model, opt, scheduler, start, stop):
    for step in range(start, stop):
        generator = torch.Generator().manual_seed(step)
        x, y = torch.randn(8, 4, generator=generator), torch.randint(0, 2, (8,), generator=generator)
        accelerator.backward(nn.functional.cross_entropy(model(x), y))
        opt.step()
        scheduler.step()
        opt.zero_grad()
        if step == 1:
            lrgroups.unwrap(opt).unfreeze("2.*")  # through accelerate's AcceleratedOptimizer


def test_accelerate_prepare_save_state_load_state_resume_bitwise(tmp_path):
    """accelerator.prepare hides the LayerwiseOptimizer; lrgroups.unwrap reaches it (unfreeze through the
    prepared object). save_state after an unfreeze, load_state into fresh objects, continue: bitwise the
    run that never stopped, with the same frozen set."""
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt, _, scheduler = _build()
    model, opt, scheduler = accelerator.prepare(model, opt, scheduler)
    assert not isinstance(opt, lrgroups.LayerwiseOptimizer) and isinstance(lrgroups.unwrap(opt), lrgroups.LayerwiseOptimizer)
    _steps(accelerator, model, opt, scheduler, 0, 3)
    accelerator.save_state(str(tmp_path))
    _steps(accelerator, model, opt, scheduler, 3, 6)

    accelerator = accelerate.Accelerator(cpu=True)
    fresh, fresh_opt, _, fresh_scheduler = _build()
    fresh, fresh_opt, fresh_scheduler = accelerator.prepare(fresh, fresh_opt, fresh_scheduler)
    accelerator.load_state(str(tmp_path))
    assert lrgroups.unwrap(fresh_opt).explain().frozen.tolist() == lrgroups.unwrap(opt).explain().frozen.tolist() == [True, True, False, False, False, False]
    _steps(accelerator, fresh, fresh_opt, fresh_scheduler, 3, 6)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(a, b)


def test_the_ratio_check_survives_accelerates_state_dict_round_trip():
    """OneCycleLR with one max_lr flattens the layer ratios: the first step warns, also through
    accelerate's wrapper, which reloads the optimizer's state dict when it is built. A checkpoint of a
    run past its first step ends the check (it already ran there); per_group peaks never warn."""
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt, _, scheduler = _build(one_cycle_max_lr=1e-2)
    model, prepared, scheduler = accelerator.prepare(model, opt, scheduler)
    with pytest.warns(UserWarning, match="no longer keep the ratios"):
        _steps(accelerator, model, prepared, scheduler, 0, 1)

    model, opt, _, scheduler = _build(one_cycle_max_lr=1e-2)
    stepped = lrgroups.unwrap(prepared).state_dict()
    assert stepped["lrgroups"]["stepped"]
    opt.load_state_dict(stepped)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 4)).sum().backward()
        opt.step()

    model, opt, _, scheduler = _build()
    model, opt, scheduler = accelerate.Accelerator(cpu=True).prepare(model, opt, scheduler)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(torch.randn(2, 4)).sum().backward()
        opt.step()


def _bn_cnn():
    torch.manual_seed(0)
    return nn.Sequential(*[layer for _ in range(3) for layer in (nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU())],
                         nn.Flatten(), nn.Linear(3 * 4 * 4, 2))


def _bn_updates(model) -> int:
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    model.train()
    model(torch.randn(4, 3, 4, 4))
    return sum(not torch.equal(b, m.running_mean) for b, m in zip(before, norms, strict=True))


def test_batchnorm_frozen_by_peft_keeps_training_mode_as_under_plain_adamw():
    """peft freezes every base parameter (BatchNorm's included) before lrgroups is built: by default
    those norms keep the mode model.train() gives them, as under a plain AdamW (3 of 3 running means
    update); norms frozen by lrgroups itself (a rule, freeze(), a schedule) still run in eval mode, and
    norm_stats="freeze_all" puts both in eval mode (the old default: 0 of 3)."""
    import peft
    config = peft.LoraConfig(r=2, target_modules=["0", "3", "6"])
    plain = peft.get_peft_model(_bn_cnn(), config)
    torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-3)
    expected = _bn_updates(plain)
    assert expected == 3
    for policy, updates in (("freeze", expected), ("freeze_all", 0)):
        model = peft.get_peft_model(_bn_cnn(), config)
        opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, norm_stats=policy, example_input=torch.zeros(1, 3, 4, 4))
        assert _bn_updates(model) == updates, policy
        opt.close()
    model = _bn_cnn()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.Rule("1.*", frozen=True)],
                                      example_input=torch.zeros(1, 3, 4, 4))
    opt.freeze("4.*")
    assert _bn_updates(model) == 1  # the two norms lrgroups froze stay put


def test_importing_lrgroups_imports_no_framework():
    """The integrations are imported only when used."""
    code = ("import sys, lrgroups; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'transformers', 'accelerate'}))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"
