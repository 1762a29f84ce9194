"""Lightning: progressive unfreezing and early stopping driven by Trainer events, their state in
Lightning checkpoints, and DDP that reduces parameters unfrozen later.

Example:
    >>> import torch, torch.nn as nn, lightning as L, lrgroups
    >>> from lrgroups.integrations.lightning import LayerwiseFinetuning
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    ...     def forward(self, x):
    ...         return self.net(x)
    ...     def training_step(self, batch, batch_idx):
    ...         x, y = batch
    ...         return nn.functional.cross_entropy(self(x), y)
    ...     def configure_optimizers(self):  # the callback adopts the LayerwiseOptimizer returned here
    ...         return lrgroups.LayerwiseOptimizer(self, torch.optim.AdamW, lr=1e-3, rules=[lrgroups.layer_decay(0.5)],
    ...                                           example_input=torch.zeros(1, 4))
    >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    >>> finetuning = LayerwiseFinetuning(unfreezing={"every_epochs": 1})
    >>> trainer = L.Trainer(max_epochs=2, callbacks=[finetuning], logger=False, enable_checkpointing=False,
    ...                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    >>> model = Net(); trainer.fit(model, data)
    >>> finetuning.schedule.stage, lrgroups.unwrap(trainer.optimizers[0]).explain().frozen.tolist()
    (2, [False, False, False, False, False, False])
"""

from __future__ import annotations

from typing import Any, Mapping

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.callbacks import EarlyStopping as LightningEarlyStopping
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.model_helpers import is_overridden
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from .. import _deprecated
from ..distributed import every_parameter_registered
from ..driver import EarlyStoppingSpec, FineTuning, UnfreezingSpec, has_plateau
from ..early_stopping import EarlyStopping
from ..monitor import ForgettingMonitor, source_loss
from ..recipes import Recipe
from ..unfreezing import ProgressiveUnfreezing
from . import LOG_LRS, _check_belongs, _check_log_lrs, _lrs, _trainable, unwrap

__all__ = ["ForgettingMonitorCallback", "LayerwiseDDPStrategy", "LayerwiseFinetuning"]


class LayerwiseFinetuning(Callback):
    """Drives :class:`~lrgroups.ProgressiveUnfreezing` and :class:`~lrgroups.EarlyStopping` over the
    :class:`~lrgroups.LayerwiseOptimizer` that ``configure_optimizers`` returns, and carries their
    state in Lightning checkpoints (a full run is in this module's example).

    Example:
        >>> from lrgroups.integrations.lightning import LayerwiseFinetuning
        >>> callback = LayerwiseFinetuning(unfreezing={"every_epochs": 1, "depths_per_stage": 2},
        ...                                early_stopping={"mode": "min", "patience": 3}, monitor="val_loss")
        >>> callback.schedule is None, callback.stopper is None, callback.state_dict()  # built in on_fit_start
        (True, True, {})
        >>> callback.early_stopping_spec
        {'mode': 'min', 'patience': 3}

    - Adopts the optimizer (``trainer.optimizers[optimizer_index]``) in ``on_fit_start``, after
      ``configure_optimizers`` and before Lightning restores the optimizer from a checkpoint, and
      builds the schedule and the stopper over it. State restored from a checkpoint (which Lightning
      hands to callbacks before the optimizer exists) is applied then, so ``trainer.fit(...,
      ckpt_path=...)`` continues at the saved stage: bitwise the run that never stopped (CPU).
    - Stages advance after each optimizer step (``every_steps``, counted by a step hook on the
      optimizer: skipped AMP steps and accumulation micro-batches do not count), in
      ``on_train_epoch_end`` (``every_epochs``; checkpoints that should include that epoch's
      unfreeze are saved there, which is ModelCheckpoint's default without a validation loop, or
      ``ModelCheckpoint(save_on_train_epoch_end=True)``), or on a plateau of ``monitor``.
    - ``monitor`` (a metric logged with ``self.log``; in DDP log it with ``sync_dist=True``) feeds the
      schedule's plateau and the early stopper in ``on_validation_end`` (not during the sanity
      check), or at the end of each training epoch with ``check_on_train_epoch_end=True`` (a training
      metric, or a fit without a validation loop): then it is read *after* the LightningModule's own
      ``on_train_epoch_end``, as Lightning's ``EarlyStopping`` reads it (Lightning calls every other
      callback's ``on_train_epoch_end`` before the module's, and its ``EarlyStopping`` and
      ``Checkpoint`` callbacks again after it: for the fit this callback puts a stateless
      ``EarlyStopping`` subclass right after itself in ``trainer.callbacks`` that hands that second
      call back, removed in ``teardown``), so a metric the module logs there is seen on the epoch it
      is logged and a stop falls on the epoch Lightning's ``EarlyStopping`` stops on; a stop is agreed across ranks as Lightning's own
      ``EarlyStopping`` does, sets ``trainer.should_stop``, and is recorded in :attr:`stopped_epoch`
      and :attr:`stop_reason` (logged on rank zero with ``verbose=True``). A fit whose monitor can
      never be fed (no validation loop, checks after validation) is refused at fit start.
    - Several callbacks can share a Trainer: :attr:`state_key` names the configuration (checkpoints
      saved under the old key ``"LayerwiseFinetuning"`` still load).
    - Group lrs: every param group carries a short ASCII ``name`` by role and depth
      (:func:`lrgroups.groups.group_names`); Lightning's ``LearningRateMonitor`` logs
      ``lr-LayerwiseOptimizer/depth3`` and ``lr-LayerwiseOptimizer/depth3-nowd`` instead of
      ``lr-LayerwiseOptimizer/pg4``. ``log_lrs="depth"`` logs one lr per role and depth instead
      (``lrgroups/lr-depth3``: the groups with and without weight decay of a depth share one column
      while their lrs are equal), ``"group"`` one per group, every ``log_every_n_steps`` steps.
    - Stages: ``lrgroups/stage`` and ``lrgroups/trainable_params`` (scalars the optimizer trains) go
      to the Trainer's loggers at the start and whenever a stage advances (``verbose=True`` says it
      on rank zero too, with the reason).
    - DDP: use :class:`LayerwiseDDPStrategy`; under another ``DDPStrategy`` :meth:`setup` raises.

    Args:
        unfreezing: ``ProgressiveUnfreezing`` keyword arguments (``plateau`` may be a dict of
            ``Plateau`` arguments), a :class:`~lrgroups.recipes.Recipe` (its schedule, stage lengths
            placed within ``trainer.estimated_stepping_batches``), or a callable ``optimizer ->
            ProgressiveUnfreezing``; ``None``: no schedule. See also :meth:`from_recipe`.
        early_stopping: ``EarlyStopping`` keyword arguments (``model`` and ``unfreezing`` are set by
            the callback: a plateau advances the schedule while stages remain); ``None``: no stopping.
        monitor: the logged metric the plateau and the stopper read.
        optimizer_index: which of ``trainer.optimizers`` is the LayerwiseOptimizer.
        check_on_train_epoch_end: feed ``monitor`` at the end of each training epoch instead of
            after each validation (Lightning ``EarlyStopping``'s argument).
        strict: a missing ``monitor`` raises (``True``) or skips the check with a warning.
        verbose: log each stage advance and each stop (its epoch and reason) on rank zero.
        log_lrs: ``None`` (leave lrs to ``LearningRateMonitor``), ``"depth"`` or ``"group"`` (see above).

    Raises:
        TypeError: the optimizer is not (or does not wrap) a LayerwiseOptimizer; a bad spec or an
            unknown argument (when the callback is built).
        ValueError: a value the schedule or the stopper refuses (when the callback is built); an
            optimizer that steps parameters that are not the LightningModule's (at fit start); a plain
            DDP strategy (see :class:`LayerwiseDDPStrategy`); a monitor no check can read (at fit
            start); a checkpoint whose callback state does not fit this configuration.
        KeyError: ``monitor`` is needed but was not logged (``strict=True``).
    """

    def __init__(
        self,
        unfreezing: UnfreezingSpec = None,
        early_stopping: EarlyStoppingSpec = None,
        *,
        monitor: str = "val_loss",
        optimizer_index: int = 0,
        check_on_train_epoch_end: bool = False,
        strict: bool = True,
        verbose: bool = False,
        log_lrs: str | None = None,
    ) -> None:
        _check_log_lrs(log_lrs, (None, *LOG_LRS))
        self._driver = FineTuning.from_specs(unfreezing, early_stopping)
        self.log_lrs = log_lrs
        self._reported_stage: int | None = None
        self._recipe = unfreezing if isinstance(unfreezing, Recipe) else None
        self.monitor = monitor
        self.optimizer_index = optimizer_index
        self.check_on_train_epoch_end = check_on_train_epoch_end
        self.strict = strict
        self.verbose = verbose
        #: The epoch at which the stopper stopped the fit (0: it did not).
        self.stopped_epoch = 0
        #: Why it stopped (:attr:`lrgroups.early_stopping.Decision.reason`); ``None``: it did not.
        self.stop_reason: str | None = None

    @property
    def state_key(self) -> str:
        """The key of this callback's state in Lightning checkpoints: the class and its configuration,
        so several callbacks can share a Trainer."""
        return self._generate_state_key(
            unfreezing=_spec_key(self._driver.unfreezing_spec),
            early_stopping=_spec_key(self._driver.early_stopping_spec),
            monitor=self.monitor,
            optimizer_index=self.optimizer_index,
        )

    @property
    def _legacy_state_key(self) -> str:
        """The key checkpoints saved before :attr:`state_key` named the configuration used."""
        return type(self).__qualname__

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, *, monitor: str = "val_acc", optimizer_index: int = 0
    ) -> "LayerwiseFinetuning":
        """The callback that runs a :class:`~lrgroups.recipes.Recipe`'s unfreezing and early stopping
        (``mode="max"`` on ``monitor`` unless the recipe says otherwise; stage lengths given as a
        function of the run's length are resolved with ``trainer.estimated_stepping_batches``). Build the
        optimizer in ``configure_optimizers`` with the recipe's rules (more rules may follow them):
        ``LayerwiseOptimizer(self, torch.optim.AdamW, lr=..., rules=recipe.rules, coarse=recipe.coarse)``;
        an optimizer whose plan no rule of the recipe produced is refused at fit start (it would run
        without the recipe's rates).

        Raises:
            ValueError: a recipe with parts the callback does not run (L2-SP, a linear probe: use
                :meth:`lrgroups.recipes.Recipe.build` in a plain loop); at fit start, an optimizer
                built without the recipe's rules.

        Example:
            >>> import lrgroups
            >>> from lrgroups.integrations.lightning import LayerwiseFinetuning
            >>> LayerwiseFinetuning.from_recipe(lrgroups.recipes.plateau_unfreezing()).monitor
            'val_acc'
        """
        parts = [
            part for part, unused in (("L2-SP", recipe.l2sp), ("a linear probe", recipe.probe_C)) if unused is not None
        ]
        if parts:
            raise ValueError(
                f"recipe {recipe.name!r} has {' and '.join(parts)}, which LayerwiseFinetuning does not run "
                "(they would be dropped silently): run it with Recipe.build(...) in a plain loop"
            )
        callback = cls(*recipe.specs(), monitor=monitor, optimizer_index=optimizer_index)
        callback._recipe = recipe
        return callback

    @property
    def schedule(self) -> ProgressiveUnfreezing | None:
        """The schedule built in ``on_fit_start`` (``None`` before, or without ``unfreezing``)."""
        return self._driver.unfreezing

    @property
    def stopper(self) -> EarlyStopping | None:
        """The stopper built in ``on_fit_start`` (``None`` before, or without ``early_stopping``)."""
        return self._driver.early_stopping

    @property
    def unfreezing_spec(self) -> UnfreezingSpec:
        """The schedule's spec (the ``unfreezing`` argument, or the recipe of :meth:`from_recipe`)."""
        return self._driver.unfreezing_spec

    @property
    def early_stopping_spec(self) -> EarlyStoppingSpec:
        """The stopper's spec (the ``early_stopping`` argument)."""
        return self._driver.early_stopping_spec

    early_stopping = _deprecated.alias("stopper")

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Refuse a plain ``DDPStrategy`` (see :class:`LayerwiseDDPStrategy`); with
        ``check_on_train_epoch_end=True`` put the hand-back of the after-module call in place."""
        if self.check_on_train_epoch_end and not any(
            isinstance(cb, _AfterModuleTrainEpochEnd) and cb.owner is self for cb in trainer.callbacks
        ):
            trainer.callbacks.insert(trainer.callbacks.index(self) + 1, _AfterModuleTrainEpochEnd(self))
        strategy = trainer.strategy
        if isinstance(strategy, DDPStrategy) and not isinstance(strategy, LayerwiseDDPStrategy):
            raise ValueError(
                f"{type(strategy).__name__} registers for gradient reduction only the parameters trainable when it "
                "wraps the model (before configure_optimizers), so parameters unfrozen later drift apart between "
                "ranks, and frozen ones fail without find_unused_parameters=True: use "
                "strategy=lrgroups.integrations.lightning.LayerwiseDDPStrategy()"
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Adopt the optimizer and build the schedule and the stopper over it (state loaded before applied)."""
        optimizers = trainer.optimizers
        if len(optimizers) <= self.optimizer_index:
            raise TypeError(
                f"configure_optimizers returned {len(optimizers)} optimizers; LayerwiseFinetuning needs a LayerwiseOptimizer"
            )
        optimizer = unwrap(optimizers[self.optimizer_index])
        _check_belongs(
            optimizer,
            pl_module,
            "the LightningModule",
            "Build it in configure_optimizers over the module: LayerwiseOptimizer(self, ...)",
        )
        if self._recipe is not None:
            _check_recipe_rules(optimizer, self._recipe)
        wants = self._driver.early_stopping_spec is not None or has_plateau(self._driver.unfreezing_spec)
        if (
            wants
            and not self.check_on_train_epoch_end
            and (trainer.limit_val_batches == 0 or not is_overridden("validation_step", pl_module))
        ):
            raise ValueError(
                f"the monitor {self.monitor!r} of early stopping or of a plateau schedule is read after "
                "validation, and this fit has no validation loop, so it would never run: pass "
                "check_on_train_epoch_end=True to read a metric logged in training"
            )
        total = trainer.estimated_stepping_batches
        total_steps = int(total) if total != float("inf") else None
        self._driver.build(optimizer, pl_module, total_steps=total_steps)  # counts optimizer steps by a step hook

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log the stage the fit starts at."""
        self._reported_stage = None
        self._report_stage(trainer)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Log the lrs the coming step uses (``log_lrs``), every ``log_every_n_steps`` steps."""
        if (
            self.log_lrs is not None
            and self._driver.optimizer is not None
            and trainer.global_step % max(trainer.log_every_n_steps, 1) == 0
        ):
            lrs = {f"lrgroups/lr-{key}": lr for key, lr in _lrs(self._driver.optimizer, self.log_lrs).items()}
            for logger in trainer.loggers:
                logger.log_metrics(lrs, step=trainer.global_step)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Log a stage the optimizer step advanced to."""
        self._report_stage(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count an epoch (Lightning calls this before the LightningModule's ``on_train_epoch_end``;
        with ``check_on_train_epoch_end=True`` the monitor is checked after it)."""
        self._driver.end_epoch()
        self._report_stage(trainer)

    def _report_stage(self, trainer: pl.Trainer) -> None:
        schedule = self._driver.unfreezing
        if schedule is None or schedule.stage == self._reported_stage:
            return
        self._reported_stage = schedule.stage
        trainable = _trainable(self._driver.optimizer)
        for logger in trainer.loggers:
            logger.log_metrics(
                {"lrgroups/stage": schedule.stage, "lrgroups/trainable_params": trainable}, step=trainer.global_step
            )
        if self.verbose:
            reason = schedule.history[-1]["reason"] if schedule.history and schedule.stage else "start"
            rank_zero_info(
                f"LayerwiseFinetuning: stage {schedule.stage} of {len(schedule.stages) - 1} at step "
                f"{trainer.global_step} (epoch {trainer.current_epoch}; {reason}): {trainable} "
                "trainable parameters"
            )

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Take the hand-back :meth:`setup` put in ``trainer.callbacks`` out again."""
        trainer.callbacks[:] = [
            cb for cb in trainer.callbacks if not (isinstance(cb, _AfterModuleTrainEpochEnd) and cb.owner is self)
        ]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Feed the monitor to the plateau or the stopper (not in the sanity check)."""
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.check_on_train_epoch_end:
            return
        self._check(trainer)

    def _check(self, trainer: pl.Trainer) -> None:
        metric = trainer.callback_metrics.get(self.monitor)
        if metric is None and not self.strict:
            rank_zero_warn(
                f"LayerwiseFinetuning: the monitored metric {self.monitor!r} was not logged; check "
                "skipped (strict=False)",
                category=RuntimeWarning,
            )
            return
        decision = self._driver.observe(metric, trainer.global_step, name=self.monitor)
        self._report_stage(trainer)
        if decision is not None:
            stop = trainer.strategy.reduce_boolean_decision(decision.stop, all=False)
            if stop and not trainer.should_stop:
                self.stopped_epoch, self.stop_reason = trainer.current_epoch, decision.reason
                if self.verbose:
                    rank_zero_info(
                        f"LayerwiseFinetuning stopped the fit at epoch {self.stopped_epoch}: {self.stop_reason}"
                    )
            trainer.should_stop = trainer.should_stop or stop

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the step hook the driver installed."""
        self._driver.close()

    def state_dict(self) -> dict[str, Any]:
        """``{"unfreezing": ..., "early_stopping": ...}``: their ``state_dict()`` (``None`` where absent)."""
        return self._driver.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Keeps the state until ``on_fit_start`` builds the schedule and stopper (Lightning loads
        callback state before ``configure_optimizers`` runs)."""
        self._driver.load_state_dict(state_dict)


def _check_recipe_rules(optimizer: Any, recipe: Recipe) -> None:
    """Refuse an optimizer in whose plan a rule of ``recipe`` matched nothing (it was built without
    ``recipe.rules``; rules allowed to match nothing cannot be told apart and are not checked)."""
    applied = {name for row in optimizer.plan for name in row.rules}
    missing = [rule.name for rule in recipe.rules if not rule.allow_empty and rule.name not in applied]
    if missing:
        raise ValueError(
            f"recipe {recipe.name!r}: the optimizer was not built with its rules ({', '.join(missing)} matched no "
            "parameter of its plan), so the run would go without the recipe's rates. Build it in "
            "configure_optimizers as LayerwiseOptimizer(self, torch.optim.AdamW, lr=..., rules=[*recipe.rules, "
            "...], coarse=recipe.coarse)"
        )


class _AfterModuleTrainEpochEnd(LightningEarlyStopping):
    """Lightning calls ``on_train_epoch_end`` of its ``EarlyStopping`` and ``Checkpoint`` callbacks a
    second time, after the LightningModule's own (``_FitLoop.on_advance_end``; those callbacks are
    skipped in the first round), and of no other callback. This stand-in sits right after its
    :class:`LayerwiseFinetuning` in ``trainer.callbacks`` during a fit with
    ``check_on_train_epoch_end=True`` and hands that second call to it. It keeps no state (nothing in
    checkpoints) and does nothing else (Lightning's ``EarlyStopping`` behaviour is not used)."""

    def __init__(self, owner: LayerwiseFinetuning) -> None:
        Callback.__init__(self)  # not EarlyStopping's: it monitors nothing itself
        self.owner = owner
        self.monitor = owner.monitor

    @property
    def state_key(self) -> str:
        return f"{self.owner.state_key}.after_module"

    @property
    def stopped_epoch(self) -> int:
        """The owner's :attr:`LayerwiseFinetuning.stopped_epoch`."""
        return self.owner.stopped_epoch

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        pass

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self.owner._check(trainer)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass


def _spec_key(spec: Any) -> Any:
    """A deterministic description of a spec for :attr:`LayerwiseFinetuning.state_key`."""
    if spec is None or isinstance(spec, Mapping):
        return None if spec is None else sorted((str(k), repr(v)) for k, v in spec.items())
    return getattr(spec, "name", None) or getattr(spec, "__qualname__", type(spec).__qualname__)


class LayerwiseDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose ``DistributedDataParallel`` registers every parameter for gradient
    reduction, frozen ones included (as :func:`lrgroups.wrap_ddp` builds it: Lightning's public
    ``configure_ddp`` runs inside :func:`lrgroups.distributed.every_parameter_registered`), with
    ``find_unused_parameters=True``: parameters frozen when Lightning wraps the model (by you, by
    peft) and unfrozen later are reduced like the others, and frozen ones (no gradient) are skipped.
    Other arguments are ``DDPStrategy``'s.

    Raises:
        ValueError: ``find_unused_parameters=False`` (frozen parameters produce no gradient).

    Example:
        >>> from lrgroups.integrations.lightning import LayerwiseDDPStrategy
        >>> strategy = LayerwiseDDPStrategy(process_group_backend="gloo")  # L.Trainer(devices=2, strategy=strategy)
        >>> strategy._ddp_kwargs["find_unused_parameters"]
        True
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("find_unused_parameters") is False:
            raise ValueError(
                "LayerwiseDDPStrategy needs find_unused_parameters=True: frozen parameters produce no gradient"
            )
        kwargs["find_unused_parameters"] = True
        super().__init__(*args, **kwargs)

    def configure_ddp(self) -> None:
        """Lightning's own ``configure_ddp`` (public), with every parameter registered for reduction
        (:func:`lrgroups.distributed.every_parameter_registered`)."""
        with every_parameter_registered(self.model):
            super().configure_ddp()


class ForgettingMonitorCallback(Callback):
    """A :class:`~lrgroups.monitor.ForgettingMonitor` over the LightningModule's LayerwiseOptimizer,
    its measurements sent to the Trainer's loggers (``forgetting/distance/depth_<d>``,
    ``forgetting/update_ratio/depth_<d>``, ``forgetting/source_<name>``) at the step they were taken.

    The weights at the start of the fit (``on_fit_start``, after a checkpoint was restored) are
    ``theta_0``. The monitor is :attr:`monitor` (its ``frame()`` holds every measurement).

    Args:
        by: ``"depth"`` or ``"group"`` (as :class:`~lrgroups.monitor.ForgettingMonitor`).
        every: measure after every ``every``-th optimizer step.
        source_batches: held-out source batches (``None``: no source metric).
        source_fn: ``source_fn(model, batch)`` -> a number or ``{name: number}``.
        source_every: evaluate the source every this many steps (default: ``every``).
        optimizer_index: which of ``configure_optimizers``' optimizers to watch.

    Raises:
        TypeError: at fit start, that optimizer is not a LayerwiseOptimizer.

    Example:
        >>> callback = ForgettingMonitorCallback(every=10)  # Trainer(callbacks=[callback])
    """

    def __init__(self, *, by: str = "depth", every: int = 1, source_batches: Any = None, source_fn: Any = source_loss,
                 source_every: int | None = None, optimizer_index: int = 0) -> None:
        self.kwargs = {"by": by, "every": every, "source_batches": source_batches, "source_fn": source_fn,
                       "source_every": source_every}
        self.optimizer_index = optimizer_index
        self.monitor: ForgettingMonitor | None = None
        self._logged = (0, 0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start watching the optimizer (``theta_0`` = the weights now)."""
        optimizers = trainer.optimizers
        if len(optimizers) <= self.optimizer_index:
            raise TypeError(f"configure_optimizers returned {len(optimizers)} optimizers; nothing to watch")
        self.monitor = ForgettingMonitor(unwrap(optimizers[self.optimizer_index]), pl_module, **self.kwargs)
        self._logged = (0, 0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Send a new measurement to the loggers."""
        if self.monitor is None:
            return
        now = (len(self.monitor.rows), len(self.monitor.source))
        if now != self._logged and (values := self.monitor.latest()):
            self._logged = now
            for logger in trainer.loggers:
                logger.log_metrics(values, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remove the monitor's hooks (its measurements stay in :attr:`monitor`)."""
        if self.monitor is not None:
            self.monitor.close()
