"""peftlab's speed settings: length buckets, precision choice, float32 attention under bf16 autocast, switches."""

from __future__ import annotations

import random

import pytest
import torch

from peftlab import speed
from peftlab.errors import PeftlabError
from peftlab.methods import METHODS
from peftlab.recipe import Data, Model, Recipe, Train


def padding_share(order: list[int], lengths: list[int], batch: int) -> float:
    batches = [order[i:i + batch] for i in range(0, len(order), batch)]
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def test_length_buckets_cover_every_example_with_less_padding_than_trainer():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    rng = random.Random(0)
    lengths = [rng.randint(3, 60) for _ in range(1000)]
    sampler = speed.LengthBucketSampler(lengths, batch_size=16, seed=0)
    order = list(sampler)
    assert sorted(order) == list(range(1000))
    assert list(sampler) == order  # same seed and epoch, same order
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new order every epoch
    trainer_order = list(LengthGroupedSampler(16, lengths=lengths, generator=torch.Generator().manual_seed(0)))
    assert padding_share(order, lengths, 16) < padding_share(trainer_order, lengths, 16) / 2
    # batches come in random length order, and the short remainder (1000 = 62 * 16 + 8) stays last
    firsts = [lengths[order[i]] for i in range(0, 992, 16)]
    assert firsts != sorted(firsts) and len(order[992:]) == 8


def recipe(precision="auto", quant=None):
    return Recipe(name="r", model=Model("m"), data=Data("d"), method=METHODS["lora"](),
                  train=Train(precision=precision), quant=quant)


def test_precision_choice(monkeypatch):
    monkeypatch.delenv(speed.DISABLE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: True)
    assert speed.use_bf16(recipe("auto")) and speed.use_bf16(recipe("bf16"))
    assert not speed.use_bf16(recipe("fp32"))
    assert not speed.use_bf16(recipe("auto", quant=object()))  # a quantized base keeps its compute dtype
    monkeypatch.setenv(speed.DISABLE_ENV, "bf16")
    assert not speed.use_bf16(recipe("auto")) and speed.settings(recipe("auto"))["disabled"] == ["bf16"]
    monkeypatch.setattr(speed, "cpu_has_native_bf16", lambda: False)
    monkeypatch.delenv(speed.DISABLE_ENV)
    assert not speed.use_bf16(recipe("auto"))  # emulated bf16 would be slower, not faster
    with pytest.raises(PeftlabError, match="no native bf16"):
        speed.use_bf16(recipe("bf16"))


def test_unknown_switch_is_an_error(monkeypatch):
    monkeypatch.setenv(speed.DISABLE_ENV, "bf16,turbo")
    with pytest.raises(PeftlabError, match="unknown switch turbo"):
        speed.enabled("bf16")


def test_fp32_attention_under_autocast(tiny_bert):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).eval()
    ids = torch.randint(5, 30, (4, 12))
    mask = torch.ones_like(ids)
    mask[0, 7:] = 0  # one padded row: the mask must still apply
    reference = model(input_ids=ids, attention_mask=mask).logits
    seen = []
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(query, *args, **kwargs):
        seen.append(query.dtype)
        return real_sdpa(query, *args, **kwargs)

    assert speed.keep_attention_fp32(model)
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        same = model(input_ids=ids, attention_mask=mask).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(input_ids=ids, attention_mask=mask).logits
    finally:
        torch.nn.functional.scaled_dot_product_attention = real_sdpa
    assert torch.equal(same, reference)  # float32: exactly the model's own SDPA
    assert seen and set(seen) == {torch.float32}  # under autocast too
    assert mixed.dtype == torch.bfloat16 and torch.allclose(mixed.float(), reference, atol=0.05)


@pytest.mark.parametrize("n", [64, 70, 72], ids=["divides", "short by 10", "short by 8"])
def test_several_processes_take_the_batches_of_one_process(n):
    """The rule stated in speed.LengthBucketSampler, through accelerate's own sharding of a training loader (each of
    2 processes takes batch_size / 2 of every batch): every step trains the examples one process trains, except the
    last step of an epoch when n does not divide by the batch size, whose short batch accelerate fills up with the
    first examples of the epoch."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    rng = random.Random(0)
    sampler = speed.LengthBucketSampler([rng.randint(3, 60) for _ in range(n)], batch_size=16, seed=0)
    one = [sorted(b) for b in BatchSampler(sampler, 16, drop_last=False)]
    shares = [list(BatchSamplerShard(BatchSampler(sampler, 8, drop_last=False), 2, rank)) for rank in (0, 1)]
    two = [sorted(first + second) for first, second in zip(*shares, strict=True)]
    assert len(two) == len(one) == -(-n // 16) and all(len(b) == 16 for b in two)
    left_over = n % 16
    assert two[:n // 16] == one[:n // 16]
    if left_over:
        epoch_start = list(sampler)[:16 - left_over]
        assert two[-1] == sorted(one[-1] + epoch_start)
