"""Model FLOPs counted from real steps against closed forms (2 × weights × tokens forward; backward 2 × forward for
trained weights, 1 × for frozen ones that pass gradients, nothing below every trained one), and the matmul peak."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from peftlab import flops
from peftlab.methods.base import Context

from test_causal_lm import make_llama


class LinearOnly(nn.Module):
    """Embedding, three linear layers, a per-token loss: every matmul is a linear layer."""

    def __init__(self, vocab: int = 16, width: int = 8, classes: int = 5):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, width)
        self.layers = nn.Sequential(nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, classes))

    def forward(self, input_ids, attention_mask=None, labels=None):
        logits = self.layers(self.embed(input_ids))
        loss = None if labels is None else nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten() % 5)
        return SimpleNamespace(loss=loss, logits=logits)


def weights(*linears) -> int:
    return sum(layer.weight.numel() for layer in linears)


@pytest.mark.parametrize("frozen, backward_factor", [
    ((), (4, 4, 4)),  # everything trained (embedding too): weight and input gradients everywhere
    (("layers.1",), (4, 2, 4)),  # a frozen middle layer still passes the gradient down: input gradient only
    # a frozen first layer on frozen inputs: no backward at all; the next one needs no input gradient
    (("embed", "layers.0"), (0, 2, 4)),
])
def test_linear_only_model_matches_the_closed_form(frozen, backward_factor):
    model = LinearOnly()
    for name, param in model.named_parameters():
        param.requires_grad = not any(name.startswith(f + ".") for f in frozen)
    counted = flops.model_flops(model, max_length=12, causal_lm=True)
    linears = list(model.layers)
    # forward: 2 × weights per token; backward: input gradient 2 ×, weight gradient 2 × weights, where autograd needs them
    assert counted.forward == flops.Polynomial(0, 2 * weights(*linears), 0)
    expected = sum((2 + b) * weights(layer) for layer, b in zip(linears, backward_factor))
    assert counted.train == flops.Polynomial(0, expected, 0)
    assert counted.training([3, 7]) == expected * 10  # real tokens only: 3 + 7
    assert all(p.grad is None for p in model.parameters()) and model.training


def _bert(model_dir, lora: bool):
    from transformers import AutoModelForSequenceClassification

    from peftlab import LoRA

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)
    if lora:
        model = LoRA(r=4, target=["query", "value"]).wrap(model, Context(("classifier",), "SEQ_CLS", False,
                                                                         str(model_dir)))
    return model


def test_lora_counts_fewer_backward_flops_than_full_fine_tuning(tiny_bert):
    full, lora = (flops.model_flops(_bert(tiny_bert, adapted), max_length=32, causal_lm=False)
                  for adapted in (False, True))
    # attention's seq² products are counted (CPU attention included): 2 products × 2 × hidden per token pair and layer
    assert full.forward.quadratic == 2 * 2 * 2 * 32 > 0
    # per token, forward = 2 × the encoder's linear weights (pooler and classifier run on one token: the constant)
    encoder = [m for n, m in _bert(tiny_bert, False).named_modules() if isinstance(m, nn.Linear) and ".encoder." in
               f".{n}"]
    assert full.forward.linear == 2 * weights(*encoder)
    assert lora.forward.linear > full.forward.linear  # the adapters' products come on top
    backward = [model.train(20) - model.forward(20) for model in (full, lora)]
    assert backward[1] < backward[0] < 2 * full.forward(20) + 1e-9


def test_the_length_polynomial_is_exact_at_other_lengths(tiny_bert):
    model = _bert(tiny_bert, lora=True)
    counted = flops.model_flops(model, max_length=32, causal_lm=False)
    model.train()
    for length in (5, 23):
        batch = flops.example_batch(model, length, 1, False)
        step = flops.count(lambda batch=batch: model(**batch).loss.backward())
        assert counted.train(length) == step


def test_causal_lm_output_layer_counted_per_labelled_or_generated_token(tmp_path):
    from transformers import AutoModelForCausalLM

    from peftlab import LoRA

    path = make_llama(tmp_path / "llama")
    model = LoRA(r=4, target="all-linear").wrap(AutoModelForCausalLM.from_pretrained(path),
                                                  Context((), "CAUSAL_LM", False, str(path)))
    counted = flops.model_flops(model, max_length=24, causal_lm=True)
    head = model.get_base_model().lm_head
    # the frozen (tied) output layer: forward, and in training the input gradient only
    assert counted.head_forward == 2 * weights(head) and counted.head_train == 4 * weights(head)
    body = [m for n, m in model.named_modules() if isinstance(m, nn.Linear) and "lm_head" not in n]
    assert counted.forward.linear == 2 * weights(*body)
    assert counted.training([10, 6], labelled=5) == counted.train(10) + counted.train(6) + 5 * counted.head_train
    assert counted.generation([10], [4]) == counted.forward(14) + 4 * counted.head_forward


def test_matmul_peak_is_positive_and_finite():
    measured = flops.peak(size=64, seconds=0.2)
    assert all(0 < measured[k] < math.inf for k in ("fp32", "bf16"))
    assert flops.mfu(1e9, 2.0, measured["fp32"]) == pytest.approx(5e8 / measured["fp32"])
