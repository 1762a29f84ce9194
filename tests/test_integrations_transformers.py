"""lrgroups.integrations.transformers with the real Hugging Face Trainer on CPU: a tiny BERT built from
a config (no download), optimizer_cls_and_kwargs as written, per-group lr logs, resume bitwise."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
import transformers

import lrgroups
from lrgroups.integrations.transformers import LayerwiseCallback


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=16, num_labels=2,
                                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(config)


def _data(n: int, seed: int) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50, (n, 6), generator=generator)
    return [{"input_ids": ids[i], "labels": int(ids[i, 0] % 2)} for i in range(n)]


def _trainer(out, model, max_steps=6, callback=None, restore=True):
    args = transformers.TrainingArguments(
        str(out), max_steps=max_steps, per_device_train_batch_size=4, report_to="none", use_cpu=True, seed=0,
        save_strategy="steps", save_steps=3, eval_strategy="steps", eval_steps=3, logging_steps=1, disable_tqdm=True,
        restore_callback_states_from_checkpoint=restore)
    callback = callback or LayerwiseCallback(unfreezing={"every_steps": 2, "depths_per_stage": 2},
                                             early_stopping={"mode": "min", "patience": 5})
    kwargs = {"model": model, "optimizer_cls": torch.optim.AdamW, "lr": 1e-3, "weight_decay": 0.01,
              "rules": [lrgroups.layer_decay(0.5), lrgroups.no_weight_decay()]}
    return transformers.Trainer(model=model, args=args, train_dataset=_data(24, 0), eval_dataset=_data(8, 1),
                                optimizer_cls_and_kwargs=(lrgroups.LayerwiseOptimizer, kwargs), callbacks=[callback])


def _train(trainer, **kwargs):
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train(**kwargs)
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, LayerwiseCallback))


def test_trainer_resume_equals_the_uninterrupted_run_and_logs_every_group(tmp_path):
    """optimizer_cls_and_kwargs=(LayerwiseOptimizer, {...}) as written builds the layer-decayed optimizer;
    every log entry has each group's lr under its name (the classifier's 1e-3-based lr, not only
    group 0's embeddings lr); a run resumed from checkpoint-3 (mid-schedule, evaluated once) with a
    fresh model, optimizer and callback ends bitwise equal to the run that never stopped."""
    full_model = _model()
    full = _trainer(tmp_path / "full", full_model)
    full_cb = _train(full)
    opt = lrgroups.unwrap(full.optimizer)
    assert full.optimizer is not opt  # accelerate's wrapper; unwrap reaches the LayerwiseOptimizer
    names = [g["name"] for g in opt.param_groups]
    entry = full.state.log_history[0]
    assert {f"learning_rate/{name}" for name in names} <= set(entry)
    assert entry[f"learning_rate/{names[-1]}"] == pytest.approx(entry["learning_rate"] * 16)  # head vs embeddings: 2**4
    assert full_cb.schedule.stage == 2 and not opt.explain().frozen.any()

    resumed_model = _model()
    resumed = _trainer(tmp_path / "full", resumed_model)
    resumed_cb = _train(resumed, resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert resumed_cb.schedule.state_dict() == full_cb.schedule.state_dict()
    assert resumed_cb.stopper.state_dict() == full_cb.stopper.state_dict()
    for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_without_the_callback_state_raises(tmp_path):
    """Without restore_callback_states_from_checkpoint the schedule would silently restart at stage 0."""
    _train(_trainer(tmp_path, _model(), max_steps=3))
    with pytest.raises(ValueError, match="restore_callback_states_from_checkpoint"):
        _train(_trainer(tmp_path, _model(), restore=False), resume_from_checkpoint=str(tmp_path / "checkpoint-3"))


def test_the_trainer_call_without_the_model_and_restore_best_are_refused():
    """The Trainer calls optimizer_cls(param_groups, **kwargs) when kwargs has no "model": the error says
    how to pass it; restore_best is the Trainer's load_best_model_at_end."""
    params = [{"params": list(_model().parameters()), "weight_decay": 0.0}]
    with pytest.raises(TypeError, match="'model': model"):
        lrgroups.LayerwiseOptimizer(params, optimizer_cls=torch.optim.AdamW, lr=1e-3)
    with pytest.raises(ValueError, match="load_best_model_at_end"):
        LayerwiseCallback(early_stopping={"restore_best": True})


def test_stage_lengths_in_steps_count_optimizer_updates_under_gradient_accumulation(tmp_path):
    """With gradient_accumulation_steps=2, max_steps=4 is 4 optimizer updates of 2 micro-batches each:
    every_steps=2 advances twice (not four times, as counting micro-batches would)."""
    model = _model()
    args = transformers.TrainingArguments(
        str(tmp_path), max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2, report_to="none",
        use_cpu=True, seed=0, save_strategy="no", eval_strategy="no", disable_tqdm=True)
    callback = LayerwiseCallback(unfreezing={"every_steps": 2, "depths_per_stage": 1})
    kwargs = {"model": model, "optimizer_cls": torch.optim.AdamW, "lr": 1e-3, "rules": [lrgroups.layer_decay(0.5)]}
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_data(24, 0),
                                   optimizer_cls_and_kwargs=(lrgroups.LayerwiseOptimizer, kwargs), callbacks=[callback])
    done = _train(trainer)
    assert trainer.state.global_step == 4 and done.schedule.stage == 2
