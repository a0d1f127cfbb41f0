"""Tiny models and data built inside the tests: no Hub, no packaged weights, seconds per run."""

from __future__ import annotations

import os
import random
import textwrap
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(2)

POSITIVE = ["good", "great", "fun", "lovely", "brilliant", "moving"]
NEGATIVE = ["bad", "dull", "awful", "boring", "mess", "tedious"]
FILLER = ["the", "a", "film", "movie", "plot", "is", "was", "very", "quite", "and", "story", "acting", "really"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + POSITIVE + NEGATIVE + FILLER


def pinned_freed_heap() -> torch.Tensor:
    """200 MiB of 64 KiB tensors (below glibc's mmap threshold: heap), all freed but the last, which is returned: kept
    alive, it pins the heap's top, so glibc cannot give the freed memory back by shrinking the heap; it stays
    resident until a malloc_trim releases its pages."""
    blocks = [torch.ones(16384) for _ in range(3200)]
    return blocks[-1]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=64)


def make_bert(path: Path, seed: int = 0, hidden: int = 32) -> Path:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=64, type_vocab_size=2)
    BertModel(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = rng.choices(FILLER, k=rng.randint(2, 8)) + [rng.choice(POSITIVE if label else NEGATIVE)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows, header=("sentence", "label")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    # 284 rows: 28 (10 %) are held out for checkpoint selection (Data.selection), 256 train
    write_tsv(root / "sst2" / "train.tsv", sentiment_rows(284, seed=1))
    write_tsv(root / "sst2" / "validation.tsv", sentiment_rows(64, seed=2))
    return root


def write_recipe(path: Path, model_dir: Path, method: str = "LoRA(r=4, alpha=8, target=['query', 'value'])",
                 train: str = "epochs=3, lr=5e-3, batch_size=16, logging_steps=5", extra: str = "",
                 name: str = "tiny", imports: str = "") -> Path:
    path.write_text(textwrap.dedent(f"""\
        from peftlab import *
        {imports}
        recipe = Recipe(
            name={name!r},
            model=Model({str(model_dir)!r}, task="classification", labels=["negative", "positive"]),
            data=Data("glue/sst2", text="sentence", label="label", max_length=32),
            method={method},
            train=Train({train}),
            {extra}
        )
        """))
    return path


def run_recipe(tmp_path: Path, recipe: Path, data_dir: Path, *extra: str) -> Path:
    """Run a recipe through the real CLI; return its (newest) finished run directory."""
    from peftlab import run as run_cli
    from peftlab import rundir

    runs = tmp_path / "runs"
    assert run_cli.main([str(recipe), "--data-dir", str(data_dir), "--runs-dir", str(runs),
                         "--reports-dir", str(tmp_path / "reports"), *extra]) == 0
    return sorted(p for p in runs.iterdir() if rundir.status(p) == "finished")[-1]


D = 64  # hidden size of bert64: bitsandbytes' 4-bit CPU kernels need blocks of 64 values


@pytest.fixture(scope="session")
def bert64(tmp_path_factory) -> Path:
    """A tiny BERT whose encoder has seen the task (a few full fine-tuning steps), like a pretrained base:
    a random encoder gives prompt-like methods almost no input signal to work with."""
    from transformers import BertForSequenceClassification

    path = make_bert(tmp_path_factory.mktemp("bert64"), hidden=D)
    warm = BertForSequenceClassification.from_pretrained(path, num_labels=2)
    train_steps(warm, steps=40, lr=1e-3)
    warm.bert.save_pretrained(path)
    return path


def sentiment_batch():
    rows = sentiment_rows(32, seed=5)
    batch = make_tokenizer()([r[0] for r in rows], padding=True, return_tensors="pt")
    return dict(batch, labels=torch.tensor([r[1] for r in rows]))


def train_steps(model, steps=60, lr=1e-2) -> tuple[float, float]:
    batch = sentiment_batch()
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    first = None
    for _ in range(steps):
        loss = model(**batch).loss
        first = loss.item() if first is None else first
        loss.backward()
        optim.step()
        optim.zero_grad()
    model.eval()
    with torch.no_grad():
        return first, model(**batch).loss.item()
