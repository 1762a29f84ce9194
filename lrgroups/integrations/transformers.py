"""Hugging Face Trainer: progressive unfreezing and early stopping as a ``TrainerCallback`` with its
state in Trainer checkpoints, and every param group's lr in the logs.

The Trainer builds a :class:`~lrgroups.LayerwiseOptimizer` itself from
``optimizer_cls_and_kwargs=(LayerwiseOptimizerFactory, {"optimizer_cls": torch.optim.AdamW, "lr": ...})``: it
calls the factory with the model it trains, also a fresh one from ``model_init`` on every ``train()``
(transformers#6699). Without ``model_init``, ``(LayerwiseOptimizer, {"model": model, ...})`` works too
(for a ``"model"`` key the Trainer calls ``LayerwiseOptimizer(model, optimizer_cls=..., lr=...)``), but binds
that instance: :class:`LayerwiseCallback` refuses an optimizer that steps another model than the
Trainer's.

Example:
    >>> import contextlib, io, torch, lrgroups, transformers
    >>> from lrgroups.integrations.transformers import LayerwiseCallback, LayerwiseOptimizerFactory
    >>> config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
    ...                                  intermediate_size=16, max_position_embeddings=16, num_labels=2)
    >>> model = transformers.BertForSequenceClassification(config)
    >>> data = [{"input_ids": torch.tensor([i % 50, 3, 7]), "labels": i % 2} for i in range(16)]
    >>> args = transformers.TrainingArguments("/tmp/lrgroups-hf-doctest", max_steps=4, per_device_train_batch_size=8,
    ...                                       report_to="none", use_cpu=True, save_strategy="no", logging_steps=2,
    ...                                       disable_tqdm=True)
    >>> trainer = transformers.Trainer(
    ...     model=model, args=args, train_dataset=data,
    ...     optimizer_cls_and_kwargs=(LayerwiseOptimizerFactory, {
    ...         "optimizer_cls": torch.optim.AdamW, "lr": 1e-3, "rules": [lrgroups.layer_decay(0.5)]}),
    ...     callbacks=[LayerwiseCallback(unfreezing={"every_steps": 1, "depths_per_stage": 2})])
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
    ...     _ = trainer.train()
    >>> sorted(key for key in trainer.state.log_history[0] if key.startswith("learning_rate/"))
    ['learning_rate/depth0', 'learning_rate/depth1', 'learning_rate/depth2', 'learning_rate/depth3', 'learning_rate/head']
    >>> trainer.state.log_history[0]["lrgroups/stage"]  # at step 2: a stage per step (every_steps=1)
    2
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .. import _deprecated
from ..driver import FineTuning
from ..early_stopping import EarlyStopping
from ..monitor import ForgettingMonitor, source_loss
from ..optimizer import LayerwiseOptimizer
from ..unfreezing import ProgressiveUnfreezing
from . import LOG_LRS, _check_belongs, _check_log_lrs, _lrs, _trainable, unwrap

__all__ = ["ForgettingMonitorCallback", "LayerwiseCallback", "LayerwiseOptimizerFactory"]

_log = logging.getLogger(__name__)

_FACTORY_FIX = (
    "Let the Trainer build it over the model it trains: optimizer_cls_and_kwargs=(lrgroups.integrations."
    "transformers.LayerwiseOptimizerFactory, {'optimizer_cls': torch.optim.AdamW, 'lr': ..., 'rules': [...]}) "
    "without a 'model' key (with model_init the Trainer trains a fresh model on every train(), and a 'model' "
    "key binds the instance made before)"
)


class LayerwiseOptimizerFactory:
    """The Hugging Face Trainer's optimizer-factory protocol for :class:`~lrgroups.LayerwiseOptimizer`:
    ``optimizer_cls_and_kwargs=(LayerwiseOptimizerFactory, kwargs)`` makes the Trainer call
    ``LayerwiseOptimizerFactory()(model, **kwargs)``, that is ``LayerwiseOptimizer(model, **kwargs)``,
    with the model it trains (``Trainer.create_optimizer``, for any first element that is not a
    ``torch.optim.Optimizer`` subclass): with ``model_init`` the fresh model of each ``train()`` (and of
    each hyperparameter-search trial), so the recipe needs no ``"model"`` key. Source:
    ``transformers.trainer_optimizer.is_optimizer_factory`` (transformers 5; tested with 5.25).

    Example:
        >>> import torch, torch.nn as nn, lrgroups
        >>> from lrgroups.integrations.transformers import LayerwiseOptimizerFactory
        >>> opt = LayerwiseOptimizerFactory()(nn.Linear(2, 2), optimizer_cls=torch.optim.AdamW, lr=1e-3)  # what the Trainer does
        >>> isinstance(opt, lrgroups.LayerwiseOptimizer)
        True

    Raises:
        TypeError: called with param groups, as a transformers without optimizer factories calls an
            optimizer class (bind the model with a ``"model"`` key there, without ``model_init``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            raise TypeError(
                "LayerwiseOptimizerFactory was called as an optimizer class (with param groups): this transformers "
                "has no optimizer factories (transformers 5 calls optimizer_cls()(model, **kwargs)). Upgrade, or pass "
                "optimizer_cls_and_kwargs=(lrgroups.LayerwiseOptimizer, {'model': model, ...}) without model_init"
            )

    def __call__(self, model: Any, **kwargs: Any) -> LayerwiseOptimizer:
        """``LayerwiseOptimizer(model, **kwargs)`` (raises what it raises)."""
        return LayerwiseOptimizer(model, **kwargs)


class LayerwiseCallback(TrainerCallback, ExportableState):
    """Drives :class:`~lrgroups.ProgressiveUnfreezing` and :class:`~lrgroups.EarlyStopping` over the
    Trainer's :class:`~lrgroups.LayerwiseOptimizer` and logs every param group's lr.

    - ``on_train_begin``: builds the schedule and the stopper over the optimizer (reached with
      :func:`lrgroups.unwrap` through accelerate's wrapper), after checking that the optimizer steps
      the model the Trainer trains (a ``"model"`` key with ``model_init`` binds another instance:
      ``ValueError`` naming :class:`LayerwiseOptimizerFactory`). On resume the Trainer has loaded the
      optimizer's checkpoint already (frozen set included); the callback's saved state is applied
      and the optimizer's state reloaded, so a resumed run equals the uninterrupted one (CPU, bitwise).
    - Stages advance after optimizer steps (``every_steps``, counted by a step hook on the optimizer),
      in ``on_epoch_end`` (``every_epochs``), or on a plateau of ``metric``; ``metric`` (a key of the
      evaluation metrics, ``"eval_loss"`` by default) also feeds the stopper in ``on_evaluate``, whose
      stop sets ``control.should_training_stop``.
    - ``on_log`` adds ``learning_rate/<group name>`` for every param group (``log_lrs="group"``; group
      names are short ASCII by role and depth, :func:`lrgroups.groups.group_names`), or one per role
      and depth (``"depth"``: a depth's groups with and without weight decay share a key while their
      lrs are equal): the lr its last step used, as the Trainer's own ``learning_rate``, which is group
      0's only; with a schedule also ``lrgroups/stage`` and ``lrgroups/trainable_params`` (scalars the
      optimizer trains; ``verbose=True`` logs each stage advance with the Python logger of this module). Callbacks run in the order they were added and the Trainer
      adds its ``report_to`` integrations first: for them to log these keys, pass ``report_to="none"``
      and add the integration's callback after this one (``callbacks=[LayerwiseCallback(...),
      TensorBoardCallback()]``); the entry of ``trainer.state.log_history`` has them either way.
    - State lives in Trainer checkpoints as ``ExportableState`` (``trainer_state.json``): set
      ``TrainingArguments(restore_callback_states_from_checkpoint=True)``; resuming without it raises
      rather than restart the schedule. The arguments are therefore plain JSON values.

    On resume the Trainer replaces this callback by one rebuilt from :meth:`state` (find it in
    ``trainer.callback_handler.callbacks``).

    Example:
        >>> from lrgroups.integrations.transformers import LayerwiseCallback
        >>> callback = LayerwiseCallback(unfreezing={"every_steps": 100}, early_stopping={"mode": "min", "patience": 3})
        >>> callback.unfreezing_spec, callback.schedule, callback.state_dict()  # built in on_train_begin
        ({'every_steps': 100}, None, {})

    Args:
        unfreezing: ``ProgressiveUnfreezing`` keyword arguments (stages as glob strings or dicts of
            selector fields; ``plateau`` as a dict of ``Plateau`` arguments); ``None``: no schedule.
        early_stopping: ``EarlyStopping`` keyword arguments without ``restore_best`` (use the Trainer's
            ``load_best_model_at_end``); ``None``: no stopping.
        metric: the evaluation metric the plateau and the stopper read.
        log_lrs: ``"group"`` or ``"depth"`` (see above).
        verbose: log each stage advance (``logging.INFO``).
        saved_state: the state :meth:`state` saved (the Trainer passes it on resume).

    Raises:
        TypeError: the Trainer's optimizer is not a LayerwiseOptimizer; a bad spec.
        ValueError: the optimizer steps parameters that are not the Trainer's model's (built over another
            instance, e.g. a ``"model"`` key with ``model_init``); ``restore_best`` in ``early_stopping``; a resume without the callback's saved
            state (``restore_callback_states_from_checkpoint`` unset) or with state that does not fit.
        KeyError: ``metric`` is needed but missing from the evaluation metrics.
    """

    def __init__(
        self,
        unfreezing: Mapping[str, Any] | None = None,
        early_stopping: Mapping[str, Any] | None = None,
        metric: str = "eval_loss",
        saved_state: Mapping[str, Any] | None = None,
        log_lrs: str = "group",
        verbose: bool = False,
    ) -> None:
        _check_log_lrs(log_lrs, LOG_LRS)
        self.log_lrs, self.verbose = log_lrs, verbose
        self._reported_stage: int | None = None
        if unfreezing is not None and not isinstance(unfreezing, Mapping):
            raise TypeError(
                "unfreezing must be a dict of ProgressiveUnfreezing arguments (JSON values: it is saved in trainer_state.json)"
            )
        if early_stopping is not None and (
            early_stopping.get("restore_best") or early_stopping.get("best_weights_path")
        ):
            raise ValueError(
                "early_stopping: restore_best is the Trainer's job here: TrainingArguments(load_best_model_at_end=True, metric_for_best_model=...)"
            )
        self.metric = metric
        self._driver = FineTuning.from_specs(
            None if unfreezing is None else dict(unfreezing), None if early_stopping is None else dict(early_stopping)
        )
        self._lr_hook = None
        self._step_lrs: dict[str, float] = {}
        if saved_state is not None:
            self._driver.load_state_dict(saved_state)

    @property
    def schedule(self) -> ProgressiveUnfreezing | None:
        """The schedule built in ``on_train_begin`` (``None`` before, or without ``unfreezing``)."""
        return self._driver.unfreezing

    @property
    def stopper(self) -> EarlyStopping | None:
        """The stopper built in ``on_train_begin`` (``None`` before, or without ``early_stopping``)."""
        return self._driver.early_stopping

    @property
    def unfreezing_spec(self) -> dict[str, Any] | None:
        """The schedule's spec: a copy of the ``unfreezing`` argument (saved in ``trainer_state.json``)."""
        return self._driver.unfreezing_spec

    @property
    def early_stopping_spec(self) -> dict[str, Any] | None:
        """The stopper's spec: a copy of the ``early_stopping`` argument."""
        return self._driver.early_stopping_spec

    unfreezing = _deprecated.alias("unfreezing_spec")
    early_stopping = _deprecated.alias("early_stopping_spec")

    def state(self) -> dict[str, Any]:
        """``ExportableState``: the arguments, and the schedule's and stopper's state as ``saved_state``
        (rebuilt by the Trainer as ``LayerwiseCallback(**args)`` on resume)."""
        return {
            "args": {
                "unfreezing": self.unfreezing_spec,
                "early_stopping": self.early_stopping_spec,
                "metric": self.metric,
                "saved_state": self._driver.state_dict(),
                "log_lrs": self.log_lrs,
                "verbose": self.verbose,
            },
            "attributes": {},
        }

    def state_dict(self) -> dict[str, Any]:
        """``{"unfreezing": ..., "early_stopping": ...}``: their ``state_dict()`` (``{}`` before training)."""
        return self._driver.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue from ``state_dict`` (kept until ``on_train_begin`` when nothing is built yet)."""
        self._driver.load_state_dict(state_dict)

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs) -> None:
        """Build the schedule and the stopper over the Trainer's optimizer (saved state applied on resume)."""
        resuming = state.global_step > 0
        if (
            resuming
            and self._driver.pending is None
            and self._driver.optimizer is None
            and (self.unfreezing_spec is not None or self.early_stopping_spec is not None)
        ):
            raise ValueError(
                "resuming without LayerwiseCallback's saved state: set TrainingArguments("
                "restore_callback_states_from_checkpoint=True), or the schedule would restart at stage 0"
            )
        opt = unwrap(optimizer)
        if model is not None:
            _check_belongs(opt, model, "the Trainer's model", _FACTORY_FIX)
        self._driver.build(opt, model, reload_optimizer=resuming, total_steps=state.max_steps)
        self._reported_stage = None
        self._report_stage(state)
        if self._lr_hook is not None:
            self._lr_hook.remove()
        # Registered after the schedule's warm-up hook: the lrs the step really uses, as the Trainer's
        # "learning_rate" is the lr of the step just taken (the scheduler has moved on when on_log runs).
        self._lr_hook = opt.register_step_pre_hook(self._record_lrs)

    def _record_lrs(self, optimizer, args, kwargs) -> None:
        self._step_lrs = {f"learning_rate/{key}": lr for key, lr in _lrs(optimizer, self.log_lrs).items()}

    def _report_stage(self, state) -> None:
        schedule = self._driver.unfreezing
        if schedule is None or schedule.stage == self._reported_stage:
            return
        self._reported_stage = schedule.stage
        if self.verbose:
            reason = schedule.history[-1]["reason"] if schedule.history and schedule.stage else "start"
            _log.info(
                "LayerwiseCallback: stage %d of %d at step %d (%s): %d trainable parameters",
                schedule.stage,
                len(schedule.stages) - 1,
                state.global_step,
                reason,
                _trainable(self._driver.optimizer),
            )

    def on_step_end(self, args, state, control, **kwargs) -> None:
        """Report a stage the optimizer step advanced to (``verbose``)."""
        self._report_stage(state)

    def on_epoch_end(self, args, state, control, **kwargs) -> None:
        """Count an epoch."""
        self._driver.end_epoch()
        self._report_stage(state)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs) -> None:
        """Feed ``metric`` to the plateau or the stopper; a stop sets ``control.should_training_stop``."""
        decision = self._driver.observe((metrics or {}).get(self.metric), state.global_step, name=self.metric)
        self._report_stage(state)
        if decision is not None and decision.stop:
            control.should_training_stop = True

    def on_log(self, args, state, control, logs=None, optimizer=None, **kwargs) -> None:
        """Add ``learning_rate/<key>`` (``log_lrs``), ``lrgroups/stage`` and ``lrgroups/trainable_params``
        to the logs."""
        if logs is None or optimizer is None or "loss" not in logs and "learning_rate" not in logs:
            return
        opt = unwrap(optimizer)
        lrs = self._step_lrs or {f"learning_rate/{key}": lr for key, lr in _lrs(opt, self.log_lrs).items()}
        if self._driver.unfreezing is not None:
            lrs = {**lrs, "lrgroups/stage": self._driver.unfreezing.stage, "lrgroups/trainable_params": _trainable(opt)}
        logs.update(lrs)  # for the callbacks after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(lrs)  # the Trainer appended a copy of logs before on_log

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """Remove the step hooks the callback installed."""
        self._driver.close()
        if self._lr_hook is not None:
            self._lr_hook.remove()
            self._lr_hook = None


class ForgettingMonitorCallback(TrainerCallback):
    """A :class:`~lrgroups.monitor.ForgettingMonitor` over the Trainer's LayerwiseOptimizer, its latest
    measurement added to every log entry (``forgetting/distance/depth_<d>``,
    ``forgetting/update_ratio/depth_<d>``, ``forgetting/source_<name>``), so the reporting integrations
    after it (TensorBoard, W&B, MLflow) and ``state.log_history`` carry it.

    The weights at ``on_train_begin`` (after a checkpoint was restored) are ``theta_0``. The monitor
    is :attr:`monitor` (its ``frame()`` holds every measurement). ``source_batches`` for an HF model
    are batches of model inputs with ``source_fn`` reading its output (e.g.
    ``lambda model, batch: {"loss": model(**batch).loss}``).

    Args:
        by: ``"depth"`` or ``"group"`` (as :class:`~lrgroups.monitor.ForgettingMonitor`).
        every: measure after every ``every``-th optimizer step.
        source_batches: held-out source batches (``None``: no source metric).
        source_fn: ``source_fn(model, batch)`` -> a number or ``{name: number}``.
        source_every: evaluate the source every this many steps (default: ``every``).

    Raises:
        TypeError: at train begin, the Trainer's optimizer is not a LayerwiseOptimizer.

    Example:
        >>> callback = ForgettingMonitorCallback(every=10)  # Trainer(..., callbacks=[callback])
    """

    def __init__(self, *, by: str = "depth", every: int = 1, source_batches: Any = None, source_fn: Any = source_loss,
                 source_every: int | None = None) -> None:
        self.kwargs = {"by": by, "every": every, "source_batches": source_batches, "source_fn": source_fn,
                       "source_every": source_every}
        self.monitor: ForgettingMonitor | None = None

    def on_train_begin(self, args, state, control, optimizer=None, model=None, **kwargs) -> None:
        """Start watching the Trainer's optimizer (``theta_0`` = the weights now)."""
        self.monitor = ForgettingMonitor(unwrap(optimizer), model, **self.kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs) -> None:
        """Add the latest measurement to the log entry."""
        if logs is None or self.monitor is None or not (values := self.monitor.latest()):
            return
        logs.update(values)  # for the callbacks after this one
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)  # the Trainer appended a copy of logs before on_log

    def on_train_end(self, args, state, control, **kwargs) -> None:
        """Remove the monitor's hooks (its measurements stay in :attr:`monitor`)."""
        if self.monitor is not None:
            self.monitor.close()
