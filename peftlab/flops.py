"""The machine's limit and how close a training step comes to it: sustained matmul throughput (fp32 and bf16) and the
model FLOPs of a training step or of generation, for model FLOPs utilisation (MFU = model FLOPs/s ÷ peak).

What is counted (model FLOPs, not what a kernel happens to execute): the matrix products of the model as torch's
FlopCounterMode sees them on one real step (linear layers, adapters included; attention's two seq² products,
query·key and weights·value, counted over the full square as torch counts them, not the causal half), in forward
and in backward. Backward is counted from the operations autograd really runs, so it is honest about frozen
weights: a frozen linear whose input still needs a gradient costs its input-gradient product only (2 × forward in
all), a trained one also the weight-gradient product (3 × forward), and a frozen layer below every trained one
nothing at all. Not counted: elementwise work (norms, activations, softmax, the optimizer), and recomputation by
gradient checkpointing (hardware work, not model work). Real tokens only: each example counts at its own length,
however it was padded or packed.

How: a step's FLOPs are, per example, a polynomial in its length L, c + a·L + b·L² (b from attention, c from e.g.
a classification head on one token). Counting one step on a single unpadded example at three lengths gives the
polynomial exactly; summing it over the examples a run trained is then cheap. For a causal LM whose logits are
its output layer on the last hidden states, the body (everything before that layer) is counted this way and the
output layer separately per token it runs on: the labelled tokens in training (peftlab's loss, levers.labelled_nll,
computes logits only there), the generated tokens in generation.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from . import levers


# torch's counter knows the GPU attention kernels but not the CPU one (torch 2.13), which computes the same products
def _cpu_attention(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention,
                 torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward}


def count(fn) -> int:
    """Matmul and attention FLOPs of whatever fn() runs (forward and any backward it calls)."""
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


# ----------------------------------------------------------------------------------------- the machine

def matmul_flops_per_second(dtype: torch.dtype, size: int, seconds: float = 1.0, repeats: int = 5,
                            device: str = "cpu") -> float:
    """Sustained FLOP/s of square size × size matmuls in dtype: the median of `repeats` timed runs of about
    seconds/repeats each (after one warm-up), 2·size³ FLOPs per product."""
    a, b = (torch.randn(size, size, device=device).to(dtype) for _ in range(2))

    def run(n: int) -> float:
        sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
        sync()
        started = time.perf_counter()
        for _ in range(n):
            torch.mm(a, b)
        sync()
        return time.perf_counter() - started

    per_product = max(run(2) / 2, 1e-9)  # the warm-up also sizes the runs
    n = max(1, round(seconds / repeats / per_product))
    return statistics.median(2 * size ** 3 * n / run(n) for _ in range(repeats))


def peak(size: int, seconds: float = 4.0, device: str = "cpu") -> dict:
    """The machine's sustained matmul throughput in fp32 and bf16 (FLOP/s), measured once per bench. On a CPU without
    native bf16, bf16 is emulated: its figure is then what bf16 would get there, far below fp32."""
    return {"size": size, "device": device,
            **{name: matmul_flops_per_second(dtype, size, seconds / 2, device=device)
               for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}}


# ------------------------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Polynomial:
    """FLOPs of one example of length L: constant + linear·L + quadratic·L²."""

    constant: float
    linear: float
    quadratic: float

    def __call__(self, length: int) -> float:
        return self.constant + self.linear * length + self.quadratic * length ** 2


def fit(flops_at, lengths: tuple[int, int, int]) -> Polynomial:
    """The quadratic through flops_at(L) at three lengths (exact: Lagrange interpolation in fractions)."""
    points = [(Fraction(n), Fraction(flops_at(n))) for n in lengths]
    coefficients = [Fraction(0)] * 3
    for i, (x_i, y_i) in enumerate(points):
        others = [x for j, (x, _) in enumerate(points) if j != i]
        scale = y_i / ((x_i - others[0]) * (x_i - others[1]))
        coefficients[0] += scale * others[0] * others[1]
        coefficients[1] -= scale * (others[0] + others[1])
        coefficients[2] += scale
    return Polynomial(*(float(c) for c in coefficients))


@dataclass(frozen=True)
class ModelFlops:
    """Per example: train(L) for a training step's forward and backward, forward(L) for a forward alone (both without
    the output layer where `head_*` are non-zero); per token the output layer runs on: head_train, head_forward."""

    train: Polynomial
    forward: Polynomial
    head_train: float = 0.0
    head_forward: float = 0.0

    def training(self, lengths, labelled: int = 0) -> float:
        """A training step (or many) over examples of these lengths with `labelled` tokens under the loss."""
        return sum(self.train(n) for n in lengths) + self.head_train * labelled

    def generation(self, prompt_lengths, generated) -> float:
        """Greedy generation of generated[i] tokens after prompt i, through a key-value cache: the model's forward
        over each final sequence (attention over the full square, as in training), the output layer once per
        generated token."""
        return sum(self.forward(p + g) + self.head_forward * g for p, g in zip(prompt_lengths, generated))

    def record(self) -> dict:
        return asdict(self)


def example_batch(model, length: int, token: int, causal_lm: bool) -> dict:
    """One unpadded example: labels on every token (causal LM) or one class label."""
    device = next(model.parameters()).device
    ids = torch.full((1, length), token, dtype=torch.long, device=device)
    labels = ids if causal_lm else torch.zeros(1, dtype=torch.long, device=device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _forward_backward(model, batch: dict, body_only: bool) -> None:
    if body_only:  # the last hidden states, every position under a stand-in loss: the body's full backward
        with levers.hidden_states_as_logits(model):
            model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().pow(2).mean().backward()
    else:
        model(**batch).loss.backward()


def _head_flops(head, train: bool) -> float:
    """The output layer on one token: forward, plus in training the backward autograd runs for it."""
    x = torch.zeros(1, 1, head.in_features, device=head.weight.device, requires_grad=train)

    def step():
        out = head(x)
        if train:
            out.float().sum().backward()

    with torch.set_grad_enabled(train):
        return count(step)


def model_flops(model, max_length: int, causal_lm: bool, token: int = 1) -> ModelFlops:
    """Count the model's FLOPs per example (module docstring). The model is left as it was (mode, no gradients);
    gradient checkpointing is switched off while counting (its recomputation is not model work)."""
    body_only = causal_lm and hasattr(model, "get_output_embeddings") and levers.plain_lm_head(model)
    training, checkpointed = model.training, getattr(model, "is_gradient_checkpointing", False)
    if checkpointed:
        model.gradient_checkpointing_disable()
    lengths = (max(1, max_length // 4), max(2, max_length // 2), max(3, max_length))

    def train_at(n: int) -> int:
        model.train()
        flops = count(lambda: _forward_backward(model, example_batch(model, n, token, causal_lm), body_only))
        model.zero_grad(set_to_none=True)
        return flops

    def forward_at(n: int) -> int:
        model.eval()
        batch = {k: v for k, v in example_batch(model, n, token, causal_lm).items() if k != "labels"}
        with torch.no_grad():
            if body_only:
                with levers.hidden_states_as_logits(model):
                    return count(lambda: model(**batch))
            return count(lambda: model(**batch))

    try:
        train, forward = fit(train_at, lengths), fit(forward_at, lengths)
        if body_only:
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            head = base.get_output_embeddings()
            return ModelFlops(train, forward, _head_flops(head, True), _head_flops(head, False))
        return ModelFlops(train, forward)
    finally:
        model.train(training)
        if checkpointed:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def mfu(flops: float, seconds: float, peak_flops_per_second: float) -> float:
    """Model FLOPs utilisation: the model FLOPs done per second as a fraction of the machine's peak."""
    return flops / max(seconds, 1e-12) / peak_flops_per_second
