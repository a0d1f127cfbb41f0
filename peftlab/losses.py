"""Training losses for classification and token classification, declared as `Train(loss=...)`.

`CrossEntropy()` with no options is the model's own loss (nothing is replaced). Any option makes peftlab hand
Trainer a `compute_loss_func` (its hook for custom losses), used in training and evaluation alike:
- CrossEntropy(class_weights, label_smoothing): torch's `cross_entropy` computes both. (Trainer's own
  `label_smoothing_factor` cannot take class weights, so one path serves every combination.)
- FocalLoss(gamma, alpha, class_weights): Lin et al. 2017, FL = -α_t (1 - p_t)^γ log p_t over the softmax.
  Written here: torch has none, and torchvision's `sigmoid_focal_loss` is the one-vs-all sigmoid form.

Weights multiply each example's loss and the sum is divided by the number of labelled items (tokens labelled
-100 are ignored), which is what Trainer expects from `compute_loss_func` (`num_items_in_batch`). So a class
weight of 3 makes that class's examples pull three times as hard; torch's weighted *mean* would instead divide by
the sum of the weights, which cancels the weights in a batch of one class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from .errors import check

LOSS_TASKS = ("classification", "token_classification")
IGNORE = -100  # transformers' label for positions without a target (padding, later word pieces)


def _check_weights(weights: list[float] | None, where: str) -> None:
    check(weights is None or (len(weights) >= 2 and all(math.isfinite(w) and w > 0 for w in weights)),
          f"{where}.class_weights={weights}: give one positive weight per label (in label order), or None")


@dataclass(frozen=True)
class CrossEntropy:
    class_weights: list[float] | None = None  # one per label, in label order
    label_smoothing: float = 0.0  # share of the target spread evenly over all classes
    kind: ClassVar[str] = "cross_entropy"

    def check(self, where: str) -> None:
        _check_weights(self.class_weights, where)
        check(0 <= self.label_smoothing < 1, f"{where}.label_smoothing={self.label_smoothing}: use a value in [0, 1), "
                                             "e.g. 0.1")

    @property
    def is_default(self) -> bool:
        return self.class_weights is None and self.label_smoothing == 0


@dataclass(frozen=True)
class FocalLoss:
    gamma: float = 2.0  # (1 - p_t)^gamma: how much confident, correct predictions are down-weighted; 0 = cross-entropy
    alpha: float | None = None  # two classes only: weight alpha for label 1, 1 - alpha for label 0 (Lin et al.)
    class_weights: list[float] | None = None  # any number of classes: alpha per label, in label order
    kind: ClassVar[str] = "focal"
    is_default: ClassVar[bool] = False

    def check(self, where: str) -> None:
        check(math.isfinite(self.gamma) and self.gamma >= 0, f"{where}.gamma={self.gamma}: must be >= 0, e.g. 2")
        check(self.alpha is None or 0 < self.alpha < 1, f"{where}.alpha={self.alpha}: use a value in (0, 1), "
                                                        "e.g. 0.25, or None")
        _check_weights(self.class_weights, where)
        check(self.alpha is None or self.class_weights is None,
              f"{where}: alpha and class_weights both weight the classes; set one of them")


Loss = CrossEntropy | FocalLoss
LOSSES = {cls.kind: cls for cls in (CrossEntropy, FocalLoss)}


def check_labels(loss: Loss, labels: list[str], where: str = "recipe.train.loss") -> None:
    """Checks that need the label set (known at recipe load when model.labels is given, else after reading data)."""
    weights = loss.class_weights
    check(weights is None or len(weights) == len(labels),
          f"{where}.class_weights: {len(weights or [])} weights for {len(labels)} labels {labels}; give one per label")
    alpha = getattr(loss, "alpha", None)
    check(alpha is None or len(labels) == 2,
          f"{where}.alpha: alpha is for two classes, this task has {len(labels)}; use class_weights instead")


def class_weight_tensor(loss: Loss) -> torch.Tensor | None:
    if getattr(loss, "alpha", None) is not None:
        return torch.tensor([1 - loss.alpha, loss.alpha])
    return None if loss.class_weights is None else torch.tensor(loss.class_weights, dtype=torch.float32)


def per_item_loss(loss: Loss, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss of every item (0 where the label is IGNORE); logits (items, classes), labels (items,)."""
    weights = class_weight_tensor(loss)
    weights = None if weights is None else weights.to(logits.device)
    if isinstance(loss, CrossEntropy):
        return F.cross_entropy(logits, labels, weight=weights, label_smoothing=loss.label_smoothing,
                               ignore_index=IGNORE, reduction="none")
    kept = labels != IGNORE
    targets = labels.clamp(min=0)
    log_p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)  # log p_t
    focal = -((1 - log_p.exp()) ** loss.gamma) * log_p
    if weights is not None:
        focal = focal * weights[targets]
    return torch.where(kept, focal, torch.zeros_like(focal))


def compute_loss_func(loss: Loss, labels: list[str]):
    """Trainer's compute_loss_func for the recipe's loss, or None to keep the model's own loss."""
    if loss.is_default:
        return None
    check_labels(loss, labels)
    classes = len(labels)

    def compute(outputs, targets, num_items_in_batch=None):
        logits = outputs.logits.float().reshape(-1, classes)
        targets = targets.reshape(-1)
        count = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE).sum()
        return per_item_loss(loss, logits, targets).sum() / torch.as_tensor(count, device=logits.device).clamp(min=1)

    return compute
