"""Training with transformers' Trainer: the recipe's Train part mapped onto TrainingArguments, plus callbacks
for rich progress, an evaluation at the very last step, and timing that leaves evaluation out."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import ExportableState, PrinterCallback
from transformers.trainer_pt_utils import LengthGroupedSampler

from . import checkpoints, distributed, levers, memory, speed, tracking


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and checkpoint at the last step too, so best-model selection sees the final weights
    (Trainer's step/epoch schedule alone can skip the end when steps don't divide evenly)."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_evaluate = True
            control.should_save = True
        return control


class StepTimer(TrainerCallback, ExportableState):
    """Wall time of training steps only (data loading, forward, backward, optimizer), without evaluation.
    Its total is saved in checkpoints and restored on resume (as a new instance: see train_seconds())."""

    def __init__(self):
        self.train_seconds = 0.0
        self._last = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_seconds += now - self._last
        self._last = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._last = time.perf_counter()  # skip the evaluation (and the save before the next step)

    def on_save(self, args, state, control, **kwargs):
        self._last = time.perf_counter()

    def state(self) -> dict:
        return {"args": {}, "attributes": {"train_seconds": self.train_seconds}}


def train_seconds(trainer) -> float:
    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, StepTimer)).train_seconds


class ReleaseFreedMemory(TrainerCallback):
    """The allocator's free pages back to the system after each evaluation batch (levers.allocator_settings says
    why); after each optimizer step the memory meter does it, between reading the step's peak and the next phase's
    start (memory.PeakRSS.switch)."""

    def on_prediction_step(self, args, state, control, **kwargs):
        levers.release_freed_memory()


class RichProgress(TrainerCallback):
    """Steps, loss, samples/s and ETA; on a non-terminal (CI, logs) one plain line per logging step."""

    def __init__(self, batch_size: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.batch_size = batch_size
        self.progress = None
        self.loss = float("nan")
        self.start = 0.0
        self.start_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.perf_counter(), state.global_step  # a resumed run starts past 0
        if not state.is_world_process_zero:  # one display for a multi-process run
            self.console.quiet = True
        if self.console.is_terminal and not self.console.quiet:
            self.progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("loss {task.fields[loss]:.4f}"),
                                     TextColumn("{task.fields[rate]:.1f} samples/s"),
                                     TimeElapsedColumn(), TimeRemainingColumn(), console=self.console)
            self.task = self.progress.add_task("train", total=state.max_steps, loss=self.loss, rate=0.0)
            self.progress.start()

    def _rate(self, state) -> float:
        return (state.global_step - self.start_step) * self.batch_size / max(time.perf_counter() - self.start, 1e-9)

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.update(self.task, completed=state.global_step, loss=self.loss, rate=self._rate(state))

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        if "loss" in logs:
            self.loss = logs["loss"]
        if self.progress is None and ("loss" in logs or "eval_loss" in logs):
            shown = {k: round(v, 4) for k, v in logs.items() if isinstance(v, float)}
            self.console.print(f"step {state.global_step}/{state.max_steps} "
                               f"{self._rate(state):.1f} samples/s {shown}", highlight=False, soft_wrap=True)

    def on_train_end(self, args, state, control, **kwargs):
        if self.progress:
            self.progress.stop()


def total_steps(recipe, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps)."""
    per_epoch = math.ceil(n_train / recipe.train.batch_size)
    total = recipe.train.max_steps or math.ceil(per_epoch * recipe.train.epochs)
    return per_epoch, total


def training_arguments(recipe, out_dir: Path, n_train: int, best_metric: str, greater_is_better: bool = True,
                       loss_over_items: bool = False, eval_batch_size: int | None = None,
                       run_name: str | None = None) -> TrainingArguments:
    t = recipe.train
    eval_batch_size = eval_batch_size or t.eval_batch_size
    per_epoch, total = total_steps(recipe, n_train)
    eval_every = max(1, min(total, per_epoch // t.evals_per_epoch))
    return TrainingArguments(
        output_dir=str(out_dir),
        # the recipe's batch is global: each process computes its share a micro-batch at a time and accumulates
        per_device_train_batch_size=distributed.per_process(levers.micro_batch_size(recipe), "micro_batch_size"),
        gradient_accumulation_steps=levers.accumulation_steps(recipe),
        per_device_eval_batch_size=max(1, eval_batch_size // distributed.world_size()),
        activation_checkpointing=levers.gradient_checkpointing(recipe),
        activation_checkpointing_kwargs={"use_reentrant": False},
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        warmup_steps=t.warmup_ratio,  # transformers 5: a float < 1 is a ratio of total steps
        lr_scheduler_type=t.scheduler,
        optim=speed.optimizer_name(),
        # With several processes Trainer gathers the batch's labelled-item count and multiplies each process's loss
        # by the process count, for any model whose forward takes **kwargs. Right where the loss is divided by that
        # count (loss_over_items: causal LMs' own loss, peftlab's losses): the mean over all the batch's tokens, as
        # in one process, not the mean of each process's mean. Wrong elsewhere: BERT-style heads take **kwargs but
        # average their own batch, so their loss would come out N times too large; off, each process averages its
        # equal share of examples and DDP averages those.
        average_tokens_across_devices=loss_over_items,
        eval_strategy="steps",
        eval_steps=eval_every,
        save_strategy="steps",
        save_steps=eval_every,
        save_total_limit=t.keep_checkpoints,  # the best checkpoint is kept in addition
        restore_callback_states_from_checkpoint=True,  # early-stopping patience, step timer
        load_best_model_at_end=True,
        metric_for_best_model=best_metric,
        greater_is_better=greater_is_better,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        length_column_name="length",
        report_to=tracking.trackers(t.report_to),
        run_name=run_name,  # how W&B, MLflow ... name the run: after its run directory
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_cpu=t.device == "cpu" or not torch.cuda.is_available(),
    )


class InOrderEvalTrainer(Trainer):
    """Trains on length buckets (speed.LengthBucketSampler), training forward passes under bf16 autocast where
    speed.use_bf16 says so, and evaluates in float32 and in dataset order.
    float32: Trainer's bf16=True would evaluate in bf16 too, and predict/merge (float32) would not reproduce the
    recorded scores. Order: with train_sampling_strategy="group_by_length" Trainer also groups evaluation batches
    by length, i.e. permutes the predictions; extractive QA decodes them against its features in dataset order
    (tasks/qa.py; QA sorts its features by length itself, to pad little). With several processes accelerate splits
    the sequential batches between them and gathers the predictions back in this order."""

    train_autocast = None  # a torch dtype, or None for float32 training
    wrapping_checked = False  # several processes: the model was found wrapped for data-parallel training
    labelled_logits = False  # causal LM: output layer and loss on labelled positions only (levers.labelled_nll)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = self._labelled_loss if self.labelled_logits else super().compute_loss
        if self.train_autocast is None or not model.training:
            return loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        with torch.autocast(self.args.device.type, dtype=self.train_autocast):
            return loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def _labelled_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own causal-LM loss (summed token NLL / Trainer's count of labelled tokens, or the batch's
        mean without a count), computed without full-vocabulary logits. Evaluation gets per-example (NLL sum,
        token count) as its predictions, what tasks/causal_lm.preprocess_logits makes of full logits."""
        labels = inputs["labels"]
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with levers.hidden_states_as_logits(self.accelerator.unwrap_model(model)) as lm_head:
            hidden = model(**inputs).logits
        hidden = hidden[:, -labels.shape[1]:]  # prompt tuning: its virtual tokens come first
        sums, counts = levers.labelled_nll(hidden, labels, lm_head)
        loss = sums.sum() / (num_items_in_batch if num_items_in_batch is not None else counts.sum().clamp(min=1))
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss: DDP averages over processes
        return (loss, {"loss": loss, "logits": torch.stack([sums, counts], 1)}) if return_outputs else loss

    def _get_eval_sampler(self, eval_dataset):
        from torch.utils.data import SequentialSampler

        return SequentialSampler(eval_dataset) if eval_dataset is not None else None

    def _get_train_sampler(self, train_dataset=None):
        # Length buckets are seeded with seed + epoch, so a resumed run sees the batches the uninterrupted one saw.
        # The "length" column (tasks' prepare) is read from the full dataset: Trainer has already dropped it from
        # the copy it passes here (same rows), and would else measure every example again.
        if self.args.train_sampling_strategy == "group_by_length" and speed.enabled("length_buckets") \
                and "length" in getattr(self.train_dataset, "column_names", ()):
            global_batch = self.args.per_device_train_batch_size * max(1, self.args.world_size) \
                * self.args.gradient_accumulation_steps  # buckets of whole optimizer-step batches
            return speed.LengthBucketSampler(self.train_dataset["length"], global_batch, self.args.data_seed)
        sampler = super()._get_train_sampler(train_dataset)
        return checkpoints.EpochSeededSampler(sampler, self.args.data_seed) \
            if isinstance(sampler, LengthGroupedSampler) else sampler  # "random": accelerate seeds it per epoch

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.args.world_size > 1 and not self.wrapping_checked and self.accelerator.unwrap_model(model) is model:
            # each process would train its own copy on its share of the data, and nothing would say so
            raise RuntimeError("several processes but the model is not wrapped for data-parallel training "
                               "(accelerate skipped it: was it prepared before?)")
        self.wrapping_checked = True
        loss = super().training_step(model, inputs, num_items_in_batch)
        checkpoints.require_finite(loss, self)
        return loss


def make_trainer(model, labelled_logits: bool = False, **kwargs) -> Trainer:
    """Trainer refuses a quantized model unless peft wrapped it; our native adapters (bottleneck) train a
    quantized base just as legitimately, so they pass the check under the same flag peft sets. The flag is
    removed right after, since save_pretrained reads it. labelled_logits (a task's LABELLED_LOGITS): the loss on
    labelled positions only where the model allows it; its predictions are then what preprocess_logits makes."""
    labelled_logits = labelled_logits and kwargs.get("compute_loss_func") is None and levers.plain_lm_head(model) \
        and speed.enabled("labelled_logits")  # the switch levers.chunked_loss reads
    if labelled_logits:
        kwargs["preprocess_logits_for_metrics"] = None
    native_on_quantized = getattr(model, "is_quantized", False) and not hasattr(model, "peft_config")
    if native_on_quantized:
        model._hf_peft_config_loaded = True
    try:
        trainer = InOrderEvalTrainer(model=model, **kwargs)
        trainer.labelled_logits = labelled_logits
        trainer.remove_callback(PrinterCallback)  # peftlab prints its own progress and results
        return trainer
    finally:
        if native_on_quantized:
            del model._hf_peft_config_loaded


def build_trainer(recipe, task, model, tokenizer, train_ds, eval_ds, out_dir: Path, compute_metrics,
                  labels: list[str], meter: memory.MemoryMeter | None = None, run_dir: Path | None = None) -> Trainer:
    """run_dir: the run directory, where TensorBoard writes (tensorboard/) and after which trackers name the run;
    None: out_dir."""
    from .losses import compute_loss_func

    loss_func = compute_loss_func(recipe.train.loss, labels)
    bf16 = speed.use_bf16(recipe)
    if bf16 and speed.fp32_attention_applies(recipe):
        speed.keep_attention_fp32(model)
    meter = meter or memory.MemoryMeter(levers.trim_period(recipe))
    callbacks = [EvaluateAtEnd(), StepTimer(), meter, RichProgress(recipe.train.batch_size),
                 checkpoints.CheckpointControl(recipe.train.checkpoint_steps)]
    if recipe.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.train.early_stopping_patience))
    callbacks += recipe.method.callbacks()  # e.g. AdaLoRA's rank schedule
    callbacks.append(ReleaseFreedMemory())
    eval_batch_size = levers.eval_batch_size(recipe, getattr(model.config, "num_hidden_layers", 1))
    loss_over_items = loss_func is not None or getattr(task, "LOSS_OVER_ITEMS", False)
    args = training_arguments(recipe, out_dir, len(train_ds), task.BEST_METRIC, getattr(task, "GREATER_IS_BETTER", True),
                              loss_over_items=loss_over_items, eval_batch_size=eval_batch_size,
                              run_name=run_dir.name if run_dir else None)
    trainer = make_trainer(
        model=model,
        labelled_logits=getattr(task, "LABELLED_LOGITS", False),
        args=args,
        optimizers=(recipe.method.optimizer(model, args), None),  # None, None: Trainer's own (the scheduler always)
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=task.collator(tokenizer),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=getattr(task, "preprocess_logits", None),
        callbacks=callbacks,
        compute_loss_func=loss_func,
    )
    tracking.log_into(trainer, run_dir or out_dir)
    trainer.train_autocast = torch.bfloat16 if bf16 else None
    # Over micro-batches Trainer sums the losses: it must divide a per-micro-batch mean (BERT-style heads) by the
    # accumulation steps, not a loss already divided by the whole batch's item count (its guess from the model's
    # **kwargs would take BERT's mean for the latter)
    trainer.loss_is_scaled_for_ga = loss_over_items
    return trainer
