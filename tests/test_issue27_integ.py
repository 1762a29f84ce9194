"""Issue 27, the integration items: each test failed on the code before its fix (see the commit messages).

- item 9: an unfreezing schedule counts optimizer *updates*, not calls (accelerate#963).
"""

from __future__ import annotations

import accelerate
import pytest
import torch
import torch.nn as nn

import lrgroups


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))


# ---------------------------------------------------------------- item 9: updates, not calls
@pytest.mark.parametrize("every_steps", [1, 2])
def test_schedule_step_in_an_accelerate_accumulate_loop_counts_updates(every_steps):
    """accelerate#963: with gradient_accumulation_steps=4 the README loop calls schedule.step() after every
    micro-batch, but accelerate's optimizer updates once per 4 micro-batches (AcceleratedOptimizer skips the
    inner step while gradients are not synced). 12 micro-batches are 3 updates: the schedule counts 3 and
    advances every `every_steps` of them, never between the micro-batches of one update."""
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=4)
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, example_input=torch.zeros(1, 4))
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=every_steps)
    data = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(48, 4), torch.randint(0, 2, (48,))), batch_size=4
    )
    model, prepared, data = accelerator.prepare(model, opt, data)
    stages = []
    for x, y in data:
        with accelerator.accumulate(model):
            accelerator.backward(nn.functional.cross_entropy(model(x), y))
            prepared.step()
            prepared.zero_grad()
            schedule.step()
            stages.append(schedule.stage)
    assert schedule.steps == 3
    assert stages == [min(micro_batch // 4 // every_steps, 2) for micro_batch in range(1, 13)]


def test_schedule_step_without_an_update_counts_nothing_and_a_skipped_amp_step_neither():
    """A call with no optimizer update since the last counted one returns [] and counts nothing; a step
    GradScaler skips (an inf gradient) is no update."""
    model = _mlp()
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1)
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=1)
    assert schedule.step() == [] and schedule.steps == 0 and schedule.stage == 0
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert schedule.step() == ["2.weight", "2.bias"] and schedule.steps == 1
    assert schedule.step() == [] and schedule.steps == 1
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(model(torch.randn(2, 4)).sum().mul(float("inf"))).backward()
    scaler.step(opt)
    scaler.update()
    assert schedule.step() == [] and schedule.steps == 1 and schedule.stage == 1


def test_a_recipes_driver_counts_updates_in_an_accelerate_accumulate_loop():
    """The driver of Recipe.build, with after_step() called after every micro-batch (as the docs' loop does)
    under accelerate's gradient_accumulation_steps=4: 8 micro-batches are 2 updates, one stage each."""
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=4)
    model = _mlp()
    tuning = lrgroups.recipes.gradual_unfreezing(epochs_per_stage=1).build(
        model, torch.optim.SGD, lr=0.1, steps_per_epoch=1
    )
    model, opt = accelerator.prepare(model, tuning.optimizer)
    for micro_batch in range(8):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.randn(4, 4)).pow(2).mean())
            opt.step()
            opt.zero_grad()
            tuning.after_step()
    assert tuning.steps == 2 and tuning.unfreezing.stage == 2


# ---------------------------------------------------------------- item 10: Lightning, check at train-epoch end
import lightning as L  # noqa: E402
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping  # noqa: E402
from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402

from lrgroups.integrations.lightning import LayerwiseFinetuning  # noqa: E402


class _LayerwiseBoring(BoringModel):
    """Lightning's BoringModel with a LayerwiseOptimizer, logging the listed values in its own
    on_train_epoch_end (as the ported Lightning tests do)."""

    def __init__(self, logged: dict[str, list]):
        super().__init__()
        self.logged = logged

    def on_train_epoch_end(self):
        for name, values in self.logged.items():
            self.log(name, torch.tensor(float(values[self.current_epoch])))

    def configure_optimizers(self):
        return lrgroups.LayerwiseOptimizer(self, torch.optim.SGD, lr=0.01)


def _stop_epoch(callbacks, logged, validation_step_none=False):
    model = _LayerwiseBoring(logged)
    if validation_step_none:
        model.validation_step = None
    trainer = L.Trainer(
        max_epochs=10,
        callbacks=callbacks,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_train_batches=2,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model)
    return trainer.current_epoch - 1


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("validation_step_none", [True, False])
@pytest.mark.parametrize(
    ("loss_values", "patience", "expected_stop_epoch"),
    [([6, 5, 5, 5, 5, 5], 3, 4), ([6, 5, 4, 4, 3, 3], 1, 3), ([6, 5, 6, 5, 5, 5], 3, 4)],
)
def test_early_stopping_patience_train_ported_from_lightning(
    validation_step_none, loss_values, patience, expected_stop_epoch, strict
):
    """Lightning's test_early_stopping_patience_train (tests/tests_pytorch/callbacks/test_early_stopping.py),
    ported: the module logs train_loss in its own on_train_epoch_end, which Lightning calls after the
    callbacks' on_train_epoch_end; LayerwiseFinetuning(check_on_train_epoch_end=True) reads it after the
    module and stops on the epoch Lightning's EarlyStopping stops on (before: KeyError with strict=True, one
    epoch late with strict=False)."""
    reference = LightningEarlyStopping(monitor="train_loss", patience=patience, check_on_train_epoch_end=True)
    assert _stop_epoch([reference], {"train_loss": loss_values}, validation_step_none) == expected_stop_epoch
    finetuning = LayerwiseFinetuning(
        early_stopping={"mode": "min", "patience": patience},
        monitor="train_loss",
        check_on_train_epoch_end=True,
        strict=strict,
    )
    assert _stop_epoch([finetuning], {"train_loss": loss_values}, validation_step_none) == expected_stop_epoch
    assert finetuning.stopped_epoch == expected_stop_epoch


_ABC, _CBA = [8, 4, 2, 3, 4, 5, 8, 10], [0] * 8


def _lrgroups(monitor, patience=3):
    return LayerwiseFinetuning(
        early_stopping={"mode": "min", "patience": patience}, monitor=monitor, check_on_train_epoch_end=True
    )


def _lightning(monitor, patience=3):
    return LightningEarlyStopping(monitor, patience=patience, check_on_train_epoch_end=True)


@pytest.mark.parametrize(
    "pair",
    [
        lambda: [_lrgroups("abc"), _lrgroups("cba")],
        lambda: [_lrgroups("cba"), _lrgroups("abc")],
        lambda: [_lrgroups("abc"), _lightning("cba")],
        lambda: [_lightning("cba"), _lrgroups("abc")],
        lambda: [_lightning("abc"), _lrgroups("cba")],
        lambda: [_lrgroups("cba"), _lightning("abc")],
    ],
    ids=["lr+lr", "lr+lr reversed", "lr+pl", "pl+lr", "pl(abc)+lr(cba)", "lr(cba)+pl(abc)"],
)
def test_multiple_early_stopping_callbacks_on_train_epoch_end_ported_from_lightning(pair):
    """Lightning's test_multiple_early_stopping_callbacks, check_on_train_epoch_end=True, single process: two
    stoppers, lrgroups' or Lightning's, on metrics logged in the module's on_train_epoch_end; the fit stops
    when the first of them says so (cba, patience 3: epoch 3), as with two Lightning EarlyStoppings."""
    assert _stop_epoch([_lightning("abc"), _lightning("cba")], {"abc": _ABC, "cba": _CBA}) == 3
    assert _stop_epoch(pair(), {"abc": _ABC, "cba": _CBA}) == 3


# ---------------------------------------------------------------- item 6: the HF Trainer with model_init
import contextlib  # noqa: E402
import io  # noqa: E402

import transformers  # noqa: E402

from lrgroups.integrations.transformers import LayerwiseCallback  # noqa: E402


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=2,
    )
    return transformers.BertForSequenceClassification(config)


def _hf_trainer(out, optimizer_cls_and_kwargs, callback=None, **trainer_kwargs):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (16, 6), generator=generator)
    args = transformers.TrainingArguments(
        str(out),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=2,
        disable_tqdm=True,
    )
    return transformers.Trainer(
        args=args,
        train_dataset=[{"input_ids": i, "labels": int(i[0] % 2)} for i in ids],
        optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
        callbacks=[callback or LayerwiseCallback(unfreezing={"every_steps": 1, "depths_per_stage": 2})],
        **trainer_kwargs,
    )


_OPTIMIZER = {"optimizer_cls": torch.optim.AdamW, "lr": 1e-3, "rules": [lrgroups.layer_decay(0.5)]}


def test_hf_model_init_with_a_bound_model_is_refused_naming_the_fix(tmp_path):
    """transformers#6699: with model_init the Trainer trains a fresh model each train(), but the recipe's
    "model" kwarg bound an instance made before: the optimizer steps a model nobody trains. The callback
    refuses it at train begin, naming the factory."""
    bound = _bert()
    trainer = _hf_trainer(tmp_path, (lrgroups.LayerwiseOptimizer, {"model": bound, **_OPTIMIZER}), model_init=_bert)
    with pytest.raises(ValueError, match="LayerwiseOptimizerFactory"):
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()


@pytest.mark.parametrize("model_init", [True, False])
def test_hf_factory_builds_the_optimizer_over_the_model_the_trainer_trains(tmp_path, model_init):
    """optimizer_cls_and_kwargs=(LayerwiseOptimizerFactory, {...}) without "model": the Trainer calls the
    factory with the model it trains (a fresh one per train() with model_init, twice here), so the layer
    decay and the schedule act on that model: it changes, its stages advance, the classifier gets lr 1e-3."""
    from lrgroups.integrations.transformers import LayerwiseOptimizerFactory

    kwargs = {"model_init": _bert} if model_init else {"model": _bert()}
    trainer = _hf_trainer(tmp_path, (LayerwiseOptimizerFactory, dict(_OPTIMIZER)), **kwargs)
    for _ in range(2 if model_init else 1):
        with contextlib.redirect_stdout(io.StringIO()):
            trainer.train()
        opt = lrgroups.unwrap(trainer.optimizer)
        managed = {id(p) for p in opt.select().values()}
        assert managed == {id(p) for p in trainer.model.parameters()}
        assert (
            max(row.lr for row in opt.plan) == 1e-3 and len({row.lr for row in opt.plan}) == 5
        )  # planned lrs, 5 depths
        callback = next(c for c in trainer.callback_handler.callbacks if isinstance(c, LayerwiseCallback))
        assert callback.schedule.optimizer is opt and callback.schedule.stage == 2
        changed = [not torch.equal(a, b) for a, b in zip(trainer.model.parameters(), _bert().parameters(), strict=True)]
        assert all(changed[-2:])  # the classifier trained


def test_lightning_refuses_an_optimizer_over_another_model_instance():
    """The kind of transformers#6699 in Lightning: configure_optimizers returns a LayerwiseOptimizer built
    over another instance of the model; the callback refuses it at fit start instead of training nothing."""

    class Elsewhere(_LayerwiseBoring):
        def configure_optimizers(self):
            return lrgroups.LayerwiseOptimizer(BoringModel(), torch.optim.SGD, lr=0.01)

    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[LayerwiseFinetuning(unfreezing={"every_epochs": 1})],
        accelerator="cpu",
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    with pytest.raises(ValueError, match="not the LightningModule's .*LayerwiseOptimizer\\(self, ...\\)"):
        trainer.fit(Elsewhere({}))


# ---------------------------------------------------------------- item 13: from_recipe and the recipe's rules
class _RecipeNet(_LayerwiseBoring):
    def __init__(self, rules):
        super().__init__({})
        self.layer = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 2))
        self.rules = rules

    def configure_optimizers(self):
        return lrgroups.LayerwiseOptimizer(self, torch.optim.SGD, lr=0.01, rules=self.rules)


def _fit_recipe(recipe, rules):
    trainer = L.Trainer(
        max_epochs=1,
        callbacks=[LayerwiseFinetuning.from_recipe(recipe)],
        accelerator="cpu",
        limit_train_batches=2,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_RecipeNet(rules))
    return lrgroups.unwrap(trainer.optimizers[0])


def test_from_recipe_refuses_an_optimizer_built_without_the_recipes_rules():
    """newcomer finding 11: from_recipe with an optimizer not built from recipe.rules ran with the
    discriminative rates lost (lrs [0.01] instead of one per depth); it is refused at fit start, naming the rules
    missing and the fix; built with them (and more rules after), it runs with the recipe's rates."""
    recipe = lrgroups.recipes.layer_decay(0.5)
    with pytest.raises(ValueError, match=r"layer_decay\(0.5\).*rules=\[\*recipe.rules"):
        _fit_recipe(recipe, [])
    opt = _fit_recipe(recipe, [*recipe.rules, lrgroups.no_weight_decay()])
    assert sorted({row.lr for row in opt.plan}) == [0.005, 0.01]  # two depths, layer decay 0.5


@pytest.mark.parametrize("recipe", [lrgroups.recipes.l2_sp(), lrgroups.recipes.lp_ft()], ids=["l2_sp", "lp_ft"])
def test_from_recipe_refuses_a_recipe_whose_parts_the_callback_does_not_run(recipe):
    """L2-SP's penalty and LP-FT's probe are run by Recipe.build, not by the callback: refused, not
    silently dropped."""
    with pytest.raises(ValueError, match="Recipe.build"):
        LayerwiseFinetuning.from_recipe(recipe)


# ---------------------------------------------------------------- item 14: torch.compile and unfreezing
def _compiles_per_stage(num_linear, **dynamo_config):
    """Stages of a compiled MLP thawed one per step; the number of graphs Dynamo compiled after each step."""
    import torch._dynamo

    compiled_graphs = []

    def backend(graph, example_inputs):  # counts compilations, runs the graph as it is
        compiled_graphs.append(graph)
        return graph.forward

    torch._dynamo.reset()
    torch.manual_seed(0)
    layers = [m for _ in range(num_linear - 1) for m in (nn.Linear(4, 4), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Linear(4, 2))
    opt = lrgroups.LayerwiseOptimizer(model, torch.optim.SGD, lr=0.1, example_input=torch.zeros(1, 4))
    schedule = lrgroups.ProgressiveUnfreezing(opt, every_steps=1)
    compiled = torch.compile(model, backend=backend)
    counts = []
    with torch._dynamo.config.patch(**dynamo_config):
        for _ in range(len(schedule.stages)):
            compiled(torch.randn(3, 4)).sum().backward()
            opt.step()
            opt.zero_grad()
            schedule.step()
            counts.append(len(compiled_graphs))
    torch._dynamo.reset()
    return counts


def test_each_unfreezing_stage_recompiles_and_dynamos_limit_stops_compiling_after_8():
    """What docs/concepts/progressive-unfreezing.md says about torch.compile, measured: a stage changes
    requires_grad, a guard of the compiled graph, so each stage compiles once more; with 12 stages Dynamo's
    default recompile_limit (8) is reached and the remaining stages run uncompiled (eager); raising
    torch._dynamo.config.recompile_limit above the number of stages keeps every stage compiled, and
    fewer stages (depths_per_stage) mean fewer compilations."""
    # 8: torch's default (other tests in a session may change the global value, so it is set here)
    assert _compiles_per_stage(12, recompile_limit=8) == [1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8]
    assert _compiles_per_stage(12, recompile_limit=16) == list(range(1, 13))


# ---------------------------------------------------------------- item 12: logs people can read
import csv  # noqa: E402
import re  # noqa: E402

_MLFLOW_KEY = re.compile(r"^[A-Za-z0-9_/. -]+$")  # what Lightning's MLFlowLogger keeps (mlflow.py)


class _ConvNet(_LayerwiseBoring):
    def __init__(self):
        super().__init__({})
        self.layer = nn.Sequential(
            nn.Linear(32, 16),
            nn.LayerNorm(16),
            nn.ReLU(),
            nn.Linear(16, 16),
            nn.LayerNorm(16),
            nn.ReLU(),
            nn.Linear(16, 2),
        )

    def configure_optimizers(self):
        opt = lrgroups.LayerwiseOptimizer(
            self,
            torch.optim.AdamW,
            lr=1e-2,
            weight_decay=0.05,
            rules=[lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()],
        )
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 / (1 + step))}


def _csv_columns(tmp_path, callback):
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="run")
    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[callback, L.pytorch.callbacks.LearningRateMonitor()],
        accelerator="cpu",
        limit_train_batches=2,
        limit_val_batches=0,
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_ConvNet())
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return trainer, rows


from pathlib import Path  # noqa: E402


def test_lightning_logs_short_ascii_names_one_lr_per_depth_and_the_stage(tmp_path, caplog):
    """newcomer findings 9 and 10: LearningRateMonitor's columns carried the planned lr (wrong once a
    scheduler runs) and non-ASCII characters MLflow strips, every depth twice; no stage was logged.
    Now: ASCII names by role and depth, no lr in them; log_lrs="depth" logs one column per depth (groups
    with and without weight decay share it), with the lr the scheduler set; lrgroups/stage and
    lrgroups/trainable_params are logged when a stage advances, and verbose says so."""
    callback = LayerwiseFinetuning(unfreezing={"every_epochs": 1}, log_lrs="depth", verbose=True)
    with caplog.at_level("INFO"):
        trainer, rows = _csv_columns(tmp_path, callback)
    columns = list(rows[0])
    monitor = sorted(c for c in columns if c.startswith("lr-"))
    assert monitor == [
        "lr-LayerwiseOptimizer/" + n for n in ["depth0", "depth0-nowd", "depth1", "depth1-nowd", "head", "head-nowd"]
    ]
    assert all(_MLFLOW_KEY.match(c) for c in columns)
    depth = sorted(c for c in columns if c.startswith("lrgroups/lr-"))
    assert depth == ["lrgroups/lr-depth0", "lrgroups/lr-depth1", "lrgroups/lr-head"]
    head_lrs = sorted({float(r["lrgroups/lr-head"]) for r in rows if r["lrgroups/lr-head"]})
    assert head_lrs == pytest.approx([1e-2 / 3, 1e-2 / 2, 1e-2])  # the lrs LambdaLR set, epoch by epoch
    stages = [
        (int(r["step"]), float(r["lrgroups/stage"]), float(r["lrgroups/trainable_params"]))
        for r in rows
        if r.get("lrgroups/stage")
    ]
    head = 16 * 2 + 2
    assert [s for _, s, _ in stages] == [0, 1, 2] and stages[0][2] == head
    assert stages[-1][2] == sum(p.numel() for p in trainer.lightning_module.parameters())
    assert "LayerwiseFinetuning: stage 1 of 2 at step 2" in caplog.text


def test_hf_logs_one_lr_per_depth_and_the_stage(tmp_path):
    """The HF callback: log_lrs="depth" gives one learning_rate/<depth> key per depth (the groups with and
    without weight decay of a depth share it), and every log entry has the stage and the trainable count."""
    from lrgroups.integrations.transformers import LayerwiseOptimizerFactory

    optimizer = {**_OPTIMIZER, "weight_decay": 0.01, "rules": [lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()]}
    callback = LayerwiseCallback(unfreezing={"every_steps": 1, "depths_per_stage": 2}, log_lrs="depth")
    trainer = _hf_trainer(tmp_path, (LayerwiseOptimizerFactory, optimizer), callback, model=_bert())
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    entry = trainer.state.log_history[0]
    keys = sorted(k for k in entry if k.startswith("learning_rate/"))
    assert keys == [
        "learning_rate/depth0",
        "learning_rate/depth1",
        "learning_rate/depth2",
        "learning_rate/depth3",
        "learning_rate/head",
    ]
    assert all(_MLFLOW_KEY.match(k) for k in entry)
    frozen = sum(
        p.numel()
        for name, p in callback.schedule.optimizer.select().items()
        if name in {n for n, k in callback.schedule.owned.items() if k > 2}
    )
    assert entry["lrgroups/stage"] == 2
    assert entry["lrgroups/trainable_params"] == sum(p.numel() for p in trainer.model.parameters()) - frozen
