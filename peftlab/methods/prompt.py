"""Prompt tuning (Lester et al. 2021) through peft: trained soft-prompt embeddings before the input."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import check
from .base import Context, PeftMethod


@dataclass(frozen=True)
class PromptTuning(PeftMethod):
    num_virtual_tokens: int = 20
    init_text: str | None = None  # initialise from the embeddings of this text instead of at random
    kind = "prompt"

    def check(self, where: str) -> None:
        check(1 <= self.num_virtual_tokens <= 512, f"{where}.num_virtual_tokens={self.num_virtual_tokens}: use 1..512")
        check(self.init_text is None or self.init_text.strip() != "", f"{where}.init_text: use None or a non-empty text")

    def check_recipe(self, recipe) -> None:
        check(recipe.quant is None, "recipe.method: PromptTuning is not supported on a quantized base here; "
                                    "set quant=None or use LoRA/DoRA/IA3/Houlsby/Pfeiffer")
        # Tasks with one output per token: peft prepends the virtual tokens to the sequence, so the outputs no
        # longer line up with the labels (token_classification: shape error; qa: spans shifted by the prompt).
        check(recipe.model.task not in ("token_classification", "qa"),
              f"recipe.method: PromptTuning does not support model.task={recipe.model.task!r} (its virtual tokens "
              "shift per-token outputs against the labels); use PrefixTuning, LoRA, IA3 or a bottleneck adapter")

    def peft_config(self, ctx: Context):
        from peft import PromptTuningConfig

        init = {"prompt_tuning_init": "TEXT", "prompt_tuning_init_text": self.init_text,
                "tokenizer_name_or_path": ctx.model_path} if self.init_text else {"prompt_tuning_init": "RANDOM"}
        return PromptTuningConfig(num_virtual_tokens=self.num_virtual_tokens, task_type=ctx.peft_task_type,
                                  modules_to_save=list(ctx.heads) or None, **init)
