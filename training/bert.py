"""BERT: masked-language-model + next-sentence pretraining of a small encoder on the training plays.

    python -m training bert [--profile tiny|quick|full] [--corpus FILE]   writes checkpoints/bert/
    python -m training evaluate bert                                     MLM / NSP accuracy on validation

The pieces are kept apart so a distributed launcher can reuse them unchanged: ``make_pairs`` builds an
epoch's sentence pairs, ``epoch_batches`` cuts each global batch into per-rank shards, ``collate`` pads
and masks one shard, ``train_step`` is one optimizer step, ``evaluate_model`` the validation pass.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from models.bert import (
    CLS,
    IGNORE,
    IS_NEXT,
    MASK,
    NOT_NEXT,
    PAD,
    SEP,
    SPECIAL_TOKENS,
    TOKENIZER_FILE,
    BertConfig,
    BertForPreTraining,
    load_tokenizer,
)
from models.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from training.common import apply_profile, pick_device, progress, set_seed
from training.data import (
    SPLIT_SEED,
    plays_in,
    read_text_file,
    shakespeare_provenance,
    split_text,
    user_provenance,
)

CHECKPOINT_ID = "bert"
MASK_PROBABILITY = 0.15  # share of (non-special) tokens selected for prediction
MASK_SPLIT = (0.8, 0.1)  # of the selected: → [MASK], → random token; the remaining 10% stay unchanged
EVAL_SEED = 1234  # the validation pairs and masks are the same for every checkpoint
USER_DOCUMENT_LINES = 100  # a user's corpus is cut into documents of this many lines for random NSP pairs

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds: the test session trains this before starting the server.
    "tiny": {"epochs": 1, "max_steps": 150, "vocab_size": 1000, "max_position": 32, "dim": 64,
             "n_layers": 2, "n_heads": 2, "ffn_dim": 128, "batch_size": 32, "lr": 1e-3, "eval_pairs": 256},
    # About three minutes on two CPU cores (bf16 autocast); what `make serve` trains.
    "quick": {"epochs": 3, "max_steps": None, "vocab_size": 8000, "max_position": 64, "dim": 128,
              "n_layers": 4, "n_heads": 4, "ffn_dim": 512, "batch_size": 64, "lr": 1e-3, "eval_pairs": None},
    # A GPU run.
    "full": {"epochs": 40, "max_steps": None, "vocab_size": 8000, "max_position": 128, "dim": 256,
             "n_layers": 6, "n_heads": 8, "ffn_dim": 1024, "batch_size": 128, "lr": 5e-4, "eval_pairs": None},
}

log = logging.getLogger("training.bert")


# ---- arguments -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab-size", type=int, default=None, help="WordPiece vocabulary size")
    parser.add_argument("--max-position", type=int, default=None,
                        help="longest input in tokens ([CLS]/[SEP] included); pairs are packed to it")
    parser.add_argument("--dim", type=int, default=None, help="hidden size")
    parser.add_argument("--n-layers", type=int, default=None, help="encoder layers")
    parser.add_argument("--n-heads", type=int, default=None, help="attention heads per layer")
    parser.add_argument("--ffn-dim", type=int, default=None, help="feed-forward inner size")
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=None, help="global batch size (sentence pairs)")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup", type=float, default=0.06, help="fraction of steps of linear warm-up")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                        help="bf16 autocast (CPUs with AVX-512 BF16, and CUDA) or plain fp32")
    _add_eval_flags(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    _add_eval_flags(parser)


def _add_eval_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval-pairs", type=int, default=None,
                        help="evaluate on only the first N validation pairs (default: all)")


# ---- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(lines: Sequence[str], vocab_size: int) -> Tokenizer:
    """WordPiece on the training text, lower-cased like bert-base-uncased (a small corpus cannot spare
    vocabulary for capitalised duplicates); specials first so [PAD] = 0."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        min_frequency=2, show_progress=False)
    tokenizer.train_from_iterator(lines, trainer)
    cls_id, sep_id = tokenizer.token_to_id(CLS), tokenizer.token_to_id(SEP)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}", pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)])
    return tokenizer


# ---- sentence pairs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    a: list[int]
    b: list[int]
    label: int  # IS_NEXT or NOT_NEXT


def documents_from_plays(part: str) -> list[list[str]]:
    """Each play is a document; its units are verse lines in play order (speech after speech)."""
    return [[line for speech in play.speeches for line in speech.lines] for play in plays_in(part)]


def documents_from_text(text: str) -> list[list[str]]:
    """A user's text: non-empty lines, cut into documents so random NSP partners come from elsewhere."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    documents = [lines[i:i + USER_DOCUMENT_LINES] for i in range(0, len(lines), USER_DOCUMENT_LINES)]
    if len(documents) < 2:
        raise ValueError(f"corpus part has {len(lines)} non-empty lines; sentence-pair training needs more "
                         f"than {USER_DOCUMENT_LINES}")
    return documents


def encode_documents(tokenizer: Tokenizer, documents: list[list[str]]) -> list[list[list[int]]]:
    """Token ids per line, specials excluded; lines that encode to nothing are dropped."""
    encoded = []
    for document in documents:
        ids = [e.ids for e in tokenizer.encode_batch(document, add_special_tokens=False)]
        encoded.append([line for line in ids if line])
    return encoded


def _random_segment(
    documents: list[list[list[int]]], exclude: int, length: int, rng: random.Random
) -> list[int]:
    """About ``length`` tokens of consecutive lines from a random document other than ``exclude``."""
    doc = rng.choice([d for d in range(len(documents)) if d != exclude and documents[d]])
    lines = documents[doc]
    start = rng.randrange(len(lines))
    segment: list[int] = []
    for line in lines[start:]:
        segment += line
        if len(segment) >= length:
            break
    return segment


def _truncate(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """Trim the longer segment until both fit: A from its start, B from its end, so the A|B boundary the
    NSP head judges stays intact."""
    while len(a) + len(b) > budget:
        if len(a) > len(b):
            a = a[1:]
        else:
            b = b[:-1]
    return a, b


def make_pairs(documents: list[list[list[int]]], max_position: int, rng: random.Random) -> list[Pair]:
    """One epoch of sentence pairs (BERT §3.1, task #2).

    Consecutive lines are gathered until they fill ``max_position - 3`` tokens and split at a random line
    boundary into A and B. Half the time B is replaced by text from another document (NOT_NEXT), and the
    real continuation starts the next pair, as in BERT's data preparation. Each epoch draws new pairs.
    """
    if len(documents) < 2:
        raise ValueError("sentence-pair training needs at least two documents")
    budget = max_position - 3
    pairs: list[Pair] = []
    for doc, lines in enumerate(documents):
        i = 0
        while i < len(lines) - 1:
            j, total = i, 0
            while j < len(lines) and (j - i < 2 or total + len(lines[j]) <= budget):
                total += len(lines[j])
                j += 1
            if j - i < 2:
                break
            split = rng.randint(i + 1, j - 1)
            a = [t for line in lines[i:split] for t in line]
            b = [t for line in lines[split:j] for t in line]
            if rng.random() < 0.5:
                label, i = IS_NEXT, j
            else:
                b = _random_segment(documents, doc, len(b), rng)
                label, i = NOT_NEXT, split
            a, b = _truncate(a, b, budget)
            pairs.append(Pair(a, b, label))
    return pairs


# ---- batches and masking -------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecialIds:
    pad: int
    cls: int
    sep: int
    mask: int
    n_special: int  # ids below this are special tokens; random replacements are drawn above it
    vocab_size: int

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> SpecialIds:
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != list(range(len(SPECIAL_TOKENS))):
            raise ValueError(f"tokenizer's special tokens are not ids 0..{len(SPECIAL_TOKENS) - 1}: {ids}")
        return cls(pad=tokenizer.token_to_id(PAD), cls=tokenizer.token_to_id(CLS),
                   sep=tokenizer.token_to_id(SEP), mask=tokenizer.token_to_id(MASK),
                   n_special=len(SPECIAL_TOKENS), vocab_size=tokenizer.get_vocab_size())


def mask_tokens(
    input_ids: torch.Tensor,
    maskable: torch.Tensor,
    ids: SpecialIds,
    generator: torch.Generator,
    probability: float = MASK_PROBABILITY,
    split: tuple[float, float] = MASK_SPLIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking: in each row, round(15%) of the maskable tokens (at least one) are selected;
    of those ``split[0]`` become [MASK], ``split[1]`` a random token, the rest stay as they are.

    Returns (corrupted input ids, labels = original id at selected positions, IGNORE elsewhere).
    """
    n_maskable = maskable.sum(dim=1)
    n_selected = (n_maskable.float() * probability).round().long().clamp(min=1).minimum(n_maskable)
    # Random scores, +inf on non-maskable positions: a row's n lowest scores are a uniform choice of n.
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~maskable, math.inf)
    rank = scores.argsort(dim=1).argsort(dim=1)
    selected = rank < n_selected[:, None]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, IGNORE))

    action = torch.rand(input_ids.shape, generator=generator)
    to_mask = selected & (action < split[0])
    to_random = selected & (action >= split[0]) & (action < split[0] + split[1])
    random_ids = torch.randint(ids.n_special, ids.vocab_size, input_ids.shape, generator=generator)
    corrupted = input_ids.masked_fill(to_mask, ids.mask)
    corrupted = torch.where(to_random, random_ids, corrupted)
    return corrupted, labels


def collate(
    pairs: Sequence[Pair],
    ids: SpecialIds,
    generator: torch.Generator,
    split: tuple[float, float] = MASK_SPLIT,
) -> dict[str, torch.Tensor]:
    """Pad ``[CLS] A [SEP] B [SEP]`` to the batch's longest pair and mask it: the model's keyword inputs."""
    length = max(len(p.a) + len(p.b) + 3 for p in pairs)
    input_ids = torch.full((len(pairs), length), ids.pad, dtype=torch.long)
    segment_ids = torch.zeros((len(pairs), length), dtype=torch.long)
    for row, pair in enumerate(pairs):
        sequence = [ids.cls, *pair.a, ids.sep, *pair.b, ids.sep]
        input_ids[row, :len(sequence)] = torch.tensor(sequence)
        segment_ids[row, len(pair.a) + 2:len(sequence)] = 1
    attention_mask = input_ids != ids.pad
    maskable = attention_mask & (input_ids != ids.cls) & (input_ids != ids.sep)
    corrupted, mlm_labels = mask_tokens(input_ids, maskable, ids, generator, split=split)
    return {
        "input_ids": corrupted,
        "segment_ids": segment_ids,
        "attention_mask": attention_mask,
        "mlm_labels": mlm_labels,
        "nsp_labels": torch.tensor([p.label for p in pairs]),
    }


def epoch_batches(
    n_pairs: int, batch_size: int, rng: random.Random, rank: int = 0, world_size: int = 1
) -> Iterator[list[int]]:
    """Shuffled global batches of pair indices, each cut into ``world_size`` shards; yields this rank's.

    The global batch size is the same whatever the number of processes, so the learning rate and the
    loss curve do not depend on it.
    """
    order = list(range(n_pairs))
    rng.shuffle(order)
    for start in range(0, n_pairs, batch_size):
        yield order[start:start + batch_size][rank::world_size]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    precision: str,
    clip: float = 1.0,
) -> float:
    """One optimizer step on one (already collated) batch; returns the loss (MLM + NSP)."""
    model.train()
    with autocast(device, precision):
        _, _, loss = model(**to_device(batch, device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


def warmup_linear_decay(total_steps: int, warmup: float) -> Any:
    """BERT's schedule: linear warm-up to the peak learning rate, then linear decay to zero."""
    warmup_steps = max(1, round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


# ---- evaluation ----------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_model(
    model: BertForPreTraining,
    tokenizer: Tokenizer,
    documents: list[list[list[int]]],
    device: torch.device,
    precision: str = "bf16",
    batch_size: int = 64,
    max_pairs: int | None = None,
) -> dict[str, Any]:
    """MLM top-1/top-5 accuracy and NSP accuracy on fixed validation pairs.

    The same 15% of tokens are selected as in training but every one becomes [MASK] (the fill-mask
    question users ask). ``mlm_top1_words`` counts only targets that contain a letter, since
    punctuation is a large and easy share of the tokens.
    """
    ids = SpecialIds.of(tokenizer)
    pairs = make_pairs(documents, model.config.max_position, random.Random(EVAL_SEED))[:max_pairs]
    generator = torch.Generator().manual_seed(EVAL_SEED)
    is_word = torch.tensor([any(c.isalpha() for c in tokenizer.id_to_token(i))
                            for i in range(ids.vocab_size)], device=device)
    model.eval()
    top1 = top5 = words = word_hits = n_masked = nsp_hits = 0
    loss_sum = 0.0
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start:start + batch_size], ids, generator, split=(1.0, 0.0))
        batch = to_device(batch, device)
        labels = batch.pop("mlm_labels")
        nsp_labels = batch.pop("nsp_labels")
        with autocast(device, precision):
            mlm_logits, nsp_logits, _ = model(**batch)
        selected = labels != IGNORE
        logits = mlm_logits[selected].float()
        targets = labels[selected]
        best5 = logits.topk(5, dim=-1).indices
        hits1 = best5[:, 0] == targets
        top1 += hits1.sum().item()
        top5 += (best5 == targets[:, None]).any(dim=-1).sum().item()
        word_targets = is_word[targets]
        words += word_targets.sum().item()
        word_hits += (hits1 & word_targets).sum().item()
        loss_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        n_masked += targets.numel()
        nsp_hits += (nsp_logits.argmax(dim=-1) == nsp_labels).sum().item()
    return {
        "mlm_top1": top1 / n_masked,
        "mlm_top5": top5 / n_masked,
        "mlm_top1_words": word_hits / max(1, words),
        "mlm_loss": loss_sum / n_masked,
        "nsp_accuracy": nsp_hits / len(pairs),
        "masked_tokens": n_masked,
        "pairs": len(pairs),
    }


# ---- training ------------------------------------------------------------------------------------


def _corpus(args: argparse.Namespace) -> tuple[list[list[str]], list[list[str]], dict[str, Any]]:
    """(training documents, validation documents, provenance) for the Shakespeare split or ``--corpus``."""
    if args.corpus is not None:
        train_text, val_text = split_text(read_text_file(args.corpus), args.val_fraction)
        return (documents_from_text(train_text), documents_from_text(val_text),
                user_provenance(args.corpus, args.val_fraction))
    return documents_from_plays("train"), documents_from_plays("validation"), shakespeare_provenance()


def train(args: argparse.Namespace) -> list[Path]:
    apply_profile(args, PROFILES)
    set_seed(args.seed)
    device = pick_device(args.device)
    started = time.perf_counter()

    train_docs, val_docs, provenance = _corpus(args)
    tokenizer = train_tokenizer([line for doc in train_docs for line in doc], args.vocab_size)
    ids = SpecialIds.of(tokenizer)
    train_encoded = encode_documents(tokenizer, train_docs)
    val_encoded = encode_documents(tokenizer, val_docs)

    config = BertConfig(vocab_size=ids.vocab_size, max_position=args.max_position, dim=args.dim,
                        n_layers=args.n_layers, n_heads=args.n_heads, ffn_dim=args.ffn_dim,
                        dropout=args.dropout, pad_id=ids.pad)
    model = BertForPreTraining(config).to(device)
    rng = random.Random(args.seed)
    generator = torch.Generator().manual_seed(args.seed)

    pairs = make_pairs(train_encoded, config.max_position, rng)  # the first epoch's; later epochs draw anew
    total_steps = args.epochs * math.ceil(len(pairs) / args.batch_size)
    if args.max_steps is not None:
        total_steps = min(total_steps, args.max_steps)
    optimizer = torch.optim.AdamW(model.optimizer_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.999),
                                  eps=1e-6, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear_decay(total_steps, args.warmup))
    n_parameters = sum(p.numel() for p in model.parameters())
    log.info("bert: %d parameters, %d training lines, %d steps", n_parameters,
             sum(len(d) for d in train_encoded), total_steps)

    step, tokens, loss, losses = 0, 0, math.nan, []
    train_started = time.perf_counter()
    bar = progress(total=total_steps, desc="bert", unit="step")
    for epoch in range(args.epochs):
        if epoch > 0:
            pairs = make_pairs(train_encoded, config.max_position, rng)
        for indices in epoch_batches(len(pairs), args.batch_size, rng):
            if step >= total_steps:
                break
            batch = collate([pairs[i] for i in indices], ids, generator)
            loss = train_step(model, batch, optimizer, scheduler, device, args.precision)
            losses.append(loss)
            step += 1
            tokens += int(batch["attention_mask"].sum())
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens / (time.perf_counter() - train_started):.0f}")
    bar.close()
    train_seconds = time.perf_counter() - train_started

    metrics = evaluate_model(model, tokenizer, val_encoded, device, args.precision, max_pairs=args.eval_pairs)
    metrics["final_train_loss"] = sum(losses[-20:]) / max(1, len(losses[-20:]))
    log.info("bert: MLM top-1 %.3f, top-5 %.3f, NSP %.3f on validation", metrics["mlm_top1"],
             metrics["mlm_top5"], metrics["nsp_accuracy"])
    checkpoint_config = {
        "id": CHECKPOINT_ID,
        "family": "bert",
        "name": CHECKPOINT_ID,
        "architecture": "BertForPreTraining",
        "model": config.to_dict(),
        "tokenizer": {"type": "wordpiece", "file": TOKENIZER_FILE, "lowercase": True},
        "data": provenance,
        "split_seed": SPLIT_SEED,
        "training": {
            "profile": args.profile, "epochs": args.epochs, "seed": args.seed, "steps": step,
            "batch_size": args.batch_size, "lr": args.lr, "weight_decay": args.weight_decay,
            "warmup": args.warmup, "precision": args.precision, "device": str(device),
            "mask_probability": MASK_PROBABILITY, "mask_split": list(MASK_SPLIT),
            "parameters": n_parameters, "tokens": tokens,
            "tokens_per_second": round(tokens / train_seconds),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    path = save_checkpoint(args.out, checkpoint_config, model.state_dict(), metrics,
                           {TOKENIZER_FILE: tokenizer.to_str()})
    return [path]


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Re-run the validation evaluation of ``checkpoints/bert`` and refresh its metrics.json."""
    checkpoint = load_checkpoint(args.out / CHECKPOINT_ID)
    device = pick_device(args.device)
    model = BertForPreTraining(BertConfig.from_dict(checkpoint.config["model"]))
    model.load_state_dict(checkpoint.state_dict)
    model.to(device)
    tokenizer = load_tokenizer(checkpoint)
    data = checkpoint.config["data"]
    if "file" in data:
        _, val_text = split_text(read_text_file(Path(data["file"])), data["val_fraction"])
        documents = documents_from_text(val_text)
    else:
        documents = documents_from_plays("validation")
    results = evaluate_model(model, tokenizer, encode_documents(tokenizer, documents), device,
                             args.precision, args.batch_size, args.eval_pairs)
    metrics = {**checkpoint.metrics, **results}
    update_metrics(checkpoint.path, metrics)
    return metrics
