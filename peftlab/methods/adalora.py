"""AdaLoRA (Zhang et al. 2023) through peft: LoRA in SVD form (P diag(E) Q) whose ranks are pruned during training
toward a total budget, the least important singular values first."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainerCallback

from ..errors import check
from .base import Context, PeftMethod, check_target_and_dropout, peft_targets

PLACEHOLDER_STEPS = 1  # peft wants total_step when the config is made; RankSchedule sets the real one


@dataclass(frozen=True)
class AdaLoRA(PeftMethod):
    init_r: int = 12  # rank every layer starts with
    target_r: int = 8  # average rank left per layer once pruned (the budget: target_r x layers)
    alpha: float = 16
    dropout: float = 0.0
    target: str | list[str] = field(default_factory=lambda: ["query", "value"])
    warmup: float = 0.1  # fraction of the optimizer steps trained at init_r before pruning starts (peft's tinit)
    final: float = 0.2  # last fraction of the steps trained at the final ranks (peft's tfinal)
    interval: int = 10  # optimizer steps between two budget allocations (peft's deltaT)
    orth_reg_weight: float = 0.5  # weight of the loss keeping P and Q orthogonal
    kind = "adalora"
    mergeable = True

    def check(self, where: str) -> None:
        check(self.init_r >= 1, f"{where}.init_r={self.init_r}: the rank must be >= 1, e.g. 12")
        check(1 <= self.target_r <= self.init_r,
              f"{where}.target_r={self.target_r}: use 1..init_r={self.init_r}, e.g. 2/3 of it")
        check(self.alpha > 0, f"{where}.alpha={self.alpha}: must be > 0, e.g. 16")
        check_target_and_dropout(self, where)
        check(self.warmup >= 0 and self.final >= 0 and self.warmup + self.final < 1,
              f"{where}.warmup={self.warmup}, final={self.final}: use fractions >= 0 that sum below 1, e.g. 0.1, 0.2")
        check(self.interval >= 1, f"{where}.interval={self.interval}: must be >= 1, e.g. 10")
        check(self.orth_reg_weight >= 0, f"{where}.orth_reg_weight={self.orth_reg_weight}: must be >= 0, e.g. 0.5")

    def peft_config(self, ctx: Context):
        from peft import AdaLoraConfig

        return AdaLoraConfig(init_r=self.init_r, target_r=self.target_r, lora_alpha=self.alpha,
                             lora_dropout=self.dropout, target_modules=peft_targets(self.target), deltaT=self.interval,
                             orth_reg_weight=self.orth_reg_weight, total_step=PLACEHOLDER_STEPS,
                             exclude_modules=list(ctx.heads) or None, task_type=ctx.peft_task_type,
                             modules_to_save=list(ctx.heads) or None)

    def callbacks(self) -> list:
        return [RankSchedule(self.warmup, self.final)]


class RankSchedule(TrainerCallback):
    """AdaLoRA's budget schedule inside Trainer: its phases from the real number of optimizer steps, and after every
    optimizer step the importance update and rank allocation. on_optimizer_step runs after optimizer.step() and
    before zero_grad() (transformers 5 Trainer), while the gradients the importance scores need are still there."""

    def __init__(self, warmup: float, final: float):
        self.warmup, self.final = warmup, final
        self.rank_pattern = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        config = model.peft_config[model.active_adapter]  # the allocator reads these at every step
        config.total_step = state.max_steps
        config.tinit = int(self.warmup * state.max_steps)
        config.tfinal = int(self.final * state.max_steps)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        # Between steps the rank pattern lives here, not in the config: peft would save each checkpoint cut to the
        # pattern of its moment and reload the best one cut to the latest pattern (a shape mismatch). Without it,
        # checkpoints and the saved adapter keep init_r per layer, the pruned ranks as zeros in E: the same function.
        config = model.peft_config[model.active_adapter]
        config.rank_pattern = self.rank_pattern
        model.base_model.update_and_allocate(state.global_step)
        self.rank_pattern, config.rank_pattern = config.rank_pattern, None
