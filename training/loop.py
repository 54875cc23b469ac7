"""The training loop every trainer runs on. A trainer supplies its data, model, loss and evaluation (a
``Task``); the loop does the rest, the same way for all of them:

    with Run(args, "gpt") as run:                          # processes, seed, the state --resume reads
        task = WindowTask(model, data, ...)                # the trainer's part
        trained = run.fit(task, Settings(...), rebuild={...})
        if run.is_main:
            run.save(record, trained, trainer_metrics)     # the served checkpoint, written atomically

- torchrun: every process draws the same global batches and trains on its rows of each
  (DistributedDataParallel averages the gradients); rank 0 evaluates, decides for all and writes.
- Gradient accumulation: a process's rows go through the model in pieces of ``--micro-batch-size``.
  A piece's loss is its share of the whole batch's loss, so the shares add up to the batch's loss
  however the rows are split, and N processes train as one does.
- Precision (``--precision``: bf16 autocast where it pays) and ``--compile``.
- The budget: ``--max-steps`` or ``--max-seconds``, whichever ends first; the learning rate follows
  whichever is further along, so a run on the clock still ends its decay when time is up. A
  ``--max-seconds`` given without ``--max-steps`` is the whole budget: the profile's step cap is dropped
  and the clock alone ends the run (and the decay).
- Evaluation every ``--eval-interval`` steps; with a ``Selection`` the best evaluated model is kept and
  the run stops when it has not improved for ``patience`` evaluations. With ``average_last`` k, the
  weights of the last k evaluations are averaged at the end (Vaswani et al., 2017) and the average is
  evaluated too: it is kept when the selection prefers it (always, without a selection).
- The training state (weights, optimizer, counters, history, every rank's RNG) every
  ``--save-interval`` steps, at each evaluation and at the end, in ``.<id>-train-state`` beside the
  checkpoint. ``--resume`` continues from it and repeats the uninterrupted run: a task's batches are a
  function of the seed alone, so the resumed run draws them again and skips those already trained on.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import torch
from torch import nn

from models.checkpoint import save_checkpoint
from training.common import progress, set_seed, weight_decay_groups
from training.distributed import Distributed, setup
from training.recipe import recipe

log = logging.getLogger("training")

STATE_FORMAT = 2  # 1: each trainer's own layout, before the shared loop
T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

# The loop's flags that a trainer's profile leaves unset take these.
DEFAULTS: dict[str, Any] = {"precision": "auto", "grad_clip": 1.0, "weight_decay": 0.0, "eval_interval": 0,
                            "save_interval": 0, "max_seconds": 0.0, "max_steps": 0, "clock": "wall"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every trainer on the loop shares, spelled and meaning the same everywhere."""
    g = parser.add_argument_group("training loop")
    g.add_argument("--batch-size", type=int, default=None,
                   help="global batch: examples per optimizer step, whatever the number of processes")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="examples per forward pass on one process (default: its whole share of the batch)")
    g.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW)")
    g.add_argument("--weight-decay", type=float, default=None, help="AdamW's decay of the weight matrices")
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this (0: off)")
    g.add_argument("--max-steps", type=int, default=None,
                   help="at most this many optimizer steps (0: as many as --epochs make)")
    g.add_argument("--max-seconds", type=float, default=None,
                   help="wall-clock budget of the training loop; the learning rate follows it (0: none)")
    g.add_argument("--clock", choices=("wall", "cpu"), default=None,
                   help="what --max-seconds counts: wall-clock time, or this process's CPU time, which is what "
                        "a quiet machine's wall clock would show when other work shares the cores")
    g.add_argument("--eval-interval", type=int, default=None,
                   help="optimizer steps between validation checks (0: the trainer's own: once an epoch for "
                        "those that keep their best model, else none during training)")
    g.add_argument("--save-interval", type=int, default=None,
                   help="optimizer steps between saves of the training state (0: at evaluations and the end)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                   help="bf16 autocast or plain fp32; auto is bf16 on GPUs and AMX CPUs, where it pays")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--resume", action="store_true",
                   help="continue from the training state kept beside the checkpoint (.<id>-train-state)")


def resolve(args: argparse.Namespace, profile: Mapping[str, Any]) -> argparse.Namespace:
    """Fill every flag left unset: the trainer's profile first, then the loop's defaults. A ``--max-seconds``
    given without ``--max-steps`` leaves the profile's step cap out, so the time asked for is the time trained."""
    if budget_given(args) and args.max_steps is None:
        args.max_steps = 0
    for values in (profile, DEFAULTS):
        for key, value in values.items():
            if getattr(args, key, None) is None:
                setattr(args, key, value)
    return args


def budget_given(args: argparse.Namespace) -> bool:
    """Whether the command line itself set a wall-clock budget (before ``resolve`` fills in the profile's)."""
    return bool(getattr(args, "max_seconds", None))


def total_steps(args: argparse.Namespace, steps_per_epoch: int) -> int | None:
    """``--epochs`` passes over the data, capped by ``--max-steps``; either alone where the other is unset;
    None (no step limit) where neither is set and ``--max-seconds`` ends the run."""
    steps = [n for n in (args.epochs and args.epochs * steps_per_epoch, args.max_steps) if n]
    if not steps:
        if args.max_seconds:
            return None
        raise ValueError("give --epochs, --max-steps or --max-seconds")
    return max(1, min(steps))


# ---- precision ------------------------------------------------------------------------------------------


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto``: bf16 autocast on GPUs that compute bf16 and on CPUs with AMX, whose tiles multiply bf16;
    fp32 elsewhere. measured: on an AVX-512-BF16 CPU without AMX, bf16 autocast took 1.1-1.9x the CPU time
    of fp32 per training step at every trainer's quick shape (one thread), GPT up to 768 wide included."""
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    try:
        return "bf16" if "amx_bf16" in Path("/proc/cpuinfo").read_text() else "fp32"
    except OSError:
        return "fp32"


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast (weights and optimizer stay fp32) or nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


# ---- what a trainer supplies --------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch(Generic[T]):
    """One global batch: the trainer's own ``data``, with how many ``rows`` (examples) it has, split over
    the processes and micro-batches, and how many ``tokens`` it trains on (throughput)."""

    data: T
    rows: int
    tokens: int


class Task(Protocol[T_contra]):
    """A trainer's part of a run."""

    model: nn.Module

    def batches(self) -> Iterator[Batch]:
        """The global batches, at least as many as the run's steps; the same for the same seed."""
        ...

    def loss(self, model: nn.Module, batch: T_contra, rows: list[int]) -> torch.Tensor:
        """The share of ``batch``'s mean loss that its ``rows`` carry (the shares of all rows add up to it)."""
        ...

    def validate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics during training (rank 0, under the run's autocast)."""
        ...


@dataclass(frozen=True)
class Schedule:
    """The learning rate: a linear warm-up over ``warmup_steps``, the peak ``lr`` for the first ``hold`` of
    the rest of the run, then a ``cosine`` or ``linear`` decay to ``min_lr`` (or none)."""

    lr: float
    min_lr: float = 0.0
    warmup_steps: int = 0
    decay: Literal["cosine", "linear", "none"] = "cosine"
    hold: float = 0.0

    def rate(self, step: int, total_steps: int | None, time_fraction: float = 0.0) -> float:
        """The rate at ``step`` of ``total_steps`` (None: no step limit) with ``time_fraction`` of the budget spent."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        done = 0.0 if total_steps is None else (step - self.warmup_steps) / max(1, total_steps - self.warmup_steps)
        done = min(1.0, max(done, time_fraction))
        if self.decay == "none" or done <= self.hold:
            return self.lr
        x = (done - self.hold) / (1.0 - self.hold)
        shape = 0.5 * (1.0 + math.cos(math.pi * x)) if self.decay == "cosine" else 1.0 - x
        return self.min_lr + (self.lr - self.min_lr) * shape


@dataclass(frozen=True)
class Selection:
    """Keep the evaluated model with the best ``metric``; stop after ``patience`` evaluations without one."""

    metric: str
    maximize: bool = False
    patience: int | None = None

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.maximize else value < best)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied (shared) parameter once


@dataclass(frozen=True)
class Record:
    """What a checkpoint says of itself besides its training (id, family, name, architecture, model,
    tokenizer, data: the format of ``models.checkpoint``), its tokenizer or vocabulary files, how to read
    the weights to save from the model, and how its parameters are counted."""

    config: dict[str, Any]
    files: dict[str, str]
    weights: Callable[[nn.Module], dict[str, torch.Tensor]] = nn.Module.state_dict
    parameters: Callable[[nn.Module], int] = parameter_count


@dataclass(frozen=True)
class Settings:
    """A trainer's choices for its run; the shared flags (--precision, --micro-batch-size, ...) come from
    the command line."""

    max_steps: int | None  # None: the wall-clock budget alone ends the run
    schedule: Schedule
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    eval_interval: int = 0  # steps between validation checks when --eval-interval is 0 (an epoch, say)
    selection: Selection | None = None
    average_last: int = 0  # average the weights of the last k evaluations at the end (0 or 1: no)
    serve_as: Record | None = None  # write the served checkpoint at every evaluation too


@dataclass
class Trained:
    """What ``Run.fit`` returns: the model (the best evaluated with a Selection, else the last) and its run."""

    model: nn.Module
    steps: int
    seconds: float  # training time, every session of a resumed run together
    tokens_per_second: float  # in this session
    history: dict[str, list]
    best: dict[str, Any] | None = None  # the evaluation the model was kept at

    def facts(self) -> dict[str, Any]:
        """The metrics every checkpoint carries about its training, its validation checks included."""
        recent = self.history["loss"][-20:]
        return {"train_loss": round(sum(recent) / max(1, len(recent)), 5), "steps": self.steps,
                "train_seconds": round(self.seconds, 1), "tokens_per_second": round(self.tokens_per_second, 1),
                "evaluations": self.history["evaluations"]}


# ---- the training state ---------------------------------------------------------------------------------


def state_dir(out: Path, checkpoint_id: str) -> Path:
    """Hidden (a leading dot), so the service never lists it as a checkpoint."""
    return Path(out) / f".{checkpoint_id}-train-state"


def load_state(directory: Path) -> dict[str, Any]:
    """The saved state, read with ``weights_only`` (tensors and plain values: loading runs no code)."""
    path = directory / "state.pt"
    if not path.is_file():
        raise FileNotFoundError(f"--resume: no training state at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: torch raises several error types, whose messages
        # speak of torch.load's arguments (one suggests weights_only=False, which would run the file's code)
        raise ValueError(f"--resume: {path} is not a training state ({type(e).__name__}); "
                         "train again without --resume") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"--resume: {path} has format {found!r}, expected {STATE_FORMAT}; "
                         "train again without --resume")
    return state


def save_state(directory: Path, dist: Distributed, state: dict[str, Any]) -> None:
    """Write ``state`` with every rank's torch RNG; a collective, so every rank calls it; rank 0 writes."""
    rng = dist.gather(torch.get_rng_state())
    if not dist.is_main:
        return
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "state.pt.tmp"
    torch.save({**state, "format": STATE_FORMAT, "torch_rng": rng}, tmp)
    os.replace(tmp, directory / "state.pt")  # a kill mid-write leaves the previous state whole
    # A readable copy of the loss curve; resuming reads the one inside state.pt.
    (directory / "history.json").write_text(json.dumps(state["history"]) + "\n", encoding="utf-8")


# ---- the run --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """The counters a run saves and a resumed run continues from."""

    step: int = 0
    seconds: float = 0.0
    tokens: int = 0
    history: dict[str, list] = field(default_factory=lambda: {"step": [], "loss": [], "lr": [], "evaluations": []})
    best: dict[str, Any] | None = None  # {"evaluation": ..., "model": state dict}
    since_best: int = 0
    recent: list[dict[str, torch.Tensor]] = field(default_factory=list)  # the last evaluations' weights


class Run:
    """One training run of one checkpoint: its processes, seed, resumable state, precision and writes."""

    def __init__(self, args: argparse.Namespace, checkpoint_id: str):
        self.args, self.id = args, checkpoint_id
        self.states = state_dir(args.out, checkpoint_id)
        self.dist: Distributed
        self.state: dict[str, Any] | None = None
        self.precision = "fp32"
        # The share of --max-seconds spent (0 without a budget): the learning rate follows it, and a task whose
        # data has phases (BERT's final one at its longest inputs) may follow it too.
        self.budget_spent = 0.0

    def __enter__(self) -> Run:
        self.dist = setup(self.args.device)
        set_seed(self.args.seed + self.dist.rank)  # dropout differs per rank; the batches do not
        try:
            self.state = load_state(self.states) if self.args.resume else None
        except BaseException:
            self.dist.close()
            raise
        return self

    def __exit__(self, error: type[BaseException] | None, *_: object) -> None:
        if error is None:
            self.dist.barrier()  # the other ranks wait until rank 0 has written the checkpoint
        self.dist.close()  # on an error too: this process leaves the group, and torchrun stops the others

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def device(self) -> torch.device:
        return self.dist.device

    @property
    def saved(self) -> dict[str, Any] | None:
        """What the resumed run's ``rebuild`` was (tokenizer, vocabularies, model shape), or None."""
        return self.state["rebuild"] if self.state else None

    def restore(self, args: argparse.Namespace, model_fields: tuple[str, ...]) -> None:
        """A resumed run keeps the saved model's shape, whatever today's flags say; the rest is today's."""
        if self.saved:
            for key in model_fields:
                setattr(args, key, self.saved["model_config"][key])

    def autocast(self) -> AbstractContextManager:
        return autocast(self.device, self.precision)

    def fit(self, task: Task, settings: Settings, rebuild: dict[str, Any]) -> Trained:
        """Train ``task.model`` as ``settings`` and the shared flags say; ``rebuild`` is saved with the state
        for a resumed run to build the same task (``Run.saved``)."""
        args, dist = self.args, self.dist
        self.precision = resolve_precision(args.precision, self.device)
        raw = task.model
        # Fused on the CPU as on CUDA: a step of the quick BERT takes 0.95x the time it takes with foreach's
        # kernels (one per operation), a step at nanoGPT's shape 0.92-0.94x (bench/gpt_cpu.py's levers).
        optimizer = torch.optim.AdamW(weight_decay_groups(raw, args.weight_decay), lr=settings.schedule.lr,
                                      betas=settings.betas, eps=settings.eps, fused=True)
        run = Progress()
        if self.state is not None:
            try:
                raw.load_state_dict(self.state["model"])
            except RuntimeError as e:  # load_state_dict's error for weights of another shape
                raise ValueError(f"--resume: the saved model does not fit today's flags ({e})") from e
            optimizer.load_state_dict(self.state["optimizer"])
            if len(self.state["torch_rng"]) == dist.world_size:  # on another number of processes: fresh streams
                torch.set_rng_state(self.state["torch_rng"][dist.rank])
            run = Progress(**{k: self.state[k] for k in ("step", "seconds", "tokens", "history", "best",
                                                          "since_best")}, recent=self.state.get("recent", []))
            log.info("%s: resumed at step %d", self.id, run.step)
        model = dist.wrap(raw)  # DDP starts every rank from rank 0's weights
        forward = torch.compile(model) if args.compile else model
        limit = settings.max_steps
        log.info("%s: %s, %s, %d process(es) on %s", self.id,
                 f"{limit} steps" if limit is not None else f"{args.max_seconds:g} s", self.precision,
                 dist.world_size, self.device)

        def snapshot() -> dict[str, Any]:
            return {"step": run.step, "seconds": run.seconds + elapsed, "tokens": run.tokens, "history": run.history,
                    "best": run.best, "since_best": run.since_best, "recent": run.recent, "model": raw.state_dict(),
                    "optimizer": optimizer.state_dict(), "rebuild": rebuild}

        batches = itertools.islice(task.batches(), run.step, None)
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        started, elapsed, tokens_at_start, losses_since = clock(), 0.0, run.tokens, 0
        budget, interval = args.max_seconds or None, args.eval_interval or settings.eval_interval
        bar = progress(total=limit, initial=run.step, desc=self.id, unit="step")
        stop = (limit is not None and run.step >= limit) or (settings.selection is not None
                                                             and self._patience_spent(run, settings))
        while not stop:
            self.budget_spent = elapsed / budget if budget else 0.0
            batch = next(batches, None)
            if batch is None:
                break
            lr = settings.schedule.rate(run.step, settings.max_steps, self.budget_spent)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = self._step(forward, task, batch, optimizer)
            # rank 0's clock, shared so that every rank stops on the same step
            loss, elapsed = dist.sum([loss, clock() - started if dist.is_main else 0.0])
            run.step += 1
            run.tokens += batch.tokens
            losses_since += 1
            for key, value in (("step", run.step), ("loss", loss), ("lr", lr)):
                run.history[key].append(value)
            bar.update()
            bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{(run.tokens - tokens_at_start) / max(elapsed, 1e-9):,.0f}",
                            lr=f"{lr:.2e}")
            stop = (limit is not None and run.step >= limit) or bool(budget and elapsed >= budget)
            due = bool(interval) and run.step % interval == 0
            # A run that selects a model is evaluated where it stops too; one that does not is evaluated in
            # full by its trainer after the loop.
            if (due and not stop) or (settings.selection is not None and (due or stop)):
                evaluation = self._evaluate(task, raw, run, settings, losses_since, run.seconds + elapsed)
                losses_since = 0
                stop = stop or self._patience_spent(run, settings)
                if settings.serve_as is not None and dist.is_main:
                    self.save(settings.serve_as, self._trained(raw, run, elapsed, tokens_at_start), evaluation)
                save_state(self.states, dist, snapshot())
            elif args.save_interval and run.step % args.save_interval == 0 and not stop:
                save_state(self.states, dist, snapshot())
        bar.close()
        save_state(self.states, dist, snapshot())
        trained = self._trained(raw, run, elapsed, tokens_at_start)
        if settings.average_last > 1 and run.recent:
            self._average(task, raw, run, settings, trained.seconds)
        if run.best is not None:
            raw.load_state_dict(run.best["model"])
            trained.best = run.best["evaluation"]
        return trained

    def _step(self, model: nn.Module, task: Task, batch: Batch, optimizer: torch.optim.Optimizer) -> float:
        """One optimizer step on a global batch: this process's rows, piece by piece; returns its loss share."""
        dist = self.dist
        pieces = dist.micro_batches(batch.rows, self.args.micro_batch_size)
        total = torch.zeros((), device=self.device)
        for i, (rows, weight) in enumerate(pieces):
            with dist.accumulating(model, last=i == len(pieces) - 1):
                with self.autocast():
                    share = weight * task.loss(model, batch.data, rows)
                # DDP averages the processes' gradients; the batch's gradient is their sum.
                (share * dist.world_size).backward()
            total += share.detach()
        if self.args.grad_clip:
            torch.nn.utils.clip_grad_norm_(task.model.parameters(), self.args.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return total.item()

    def _evaluate(self, task: Task, raw: nn.Module, run: Progress, settings: Settings, steps: int,
                  seconds: float, averaged: int = 0) -> dict[str, Any]:
        """Rank 0 validates and every rank takes its figures, so all keep the same model and stop together.
        ``averaged``: the model is the mean of that many evaluations' weights."""
        metrics: dict[str, Any] | None = None
        if self.is_main:
            raw.eval()
            with torch.no_grad(), self.autocast():
                metrics = task.validate(raw)
            raw.train()
        metrics = self.dist.broadcast(metrics)
        recent = run.history["loss"][-steps:] if steps else []
        evaluation = {"step": run.step, "seconds": round(seconds, 2),
                      **({"train_loss": round(sum(recent) / len(recent), 5)} if recent else {}),
                      **{k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()},
                      **({"averaged": averaged} if averaged else {})}
        run.history["evaluations"].append(evaluation)
        log.info("%s step %d: %s", self.id, run.step, ", ".join(f"{k} {v}" for k, v in evaluation.items()
                                                                 if k != "step"))
        if settings.average_last > 1 and not averaged:
            run.recent = [*run.recent, copy.deepcopy(raw.state_dict())][-settings.average_last:]
        selection = settings.selection
        if selection is not None:
            best = run.best["evaluation"][selection.metric] if run.best else None
            if selection.better(evaluation[selection.metric], best):
                run.best, run.since_best = {"evaluation": evaluation, "model": copy.deepcopy(raw.state_dict())}, 0
            else:
                run.since_best += 1
        return evaluation

    def _average(self, task: Task, raw: nn.Module, run: Progress, settings: Settings, seconds: float) -> None:
        """Evaluate the mean of the last evaluations' weights (the final weights among them, evaluated or not);
        the model becomes it if the selection prefers it (then it is the best), or if there is no selection."""
        last = raw.state_dict()
        evaluated_last = run.history["evaluations"][-1]["step"] == run.step
        snapshots = run.recent if evaluated_last else [*run.recent, last][-settings.average_last:]
        averaged = {name: sum(weights[name].float() for weights in snapshots).div(len(snapshots)).to(value.dtype)
                    if value.is_floating_point() else value for name, value in last.items()}
        raw.load_state_dict(averaged)
        before = run.best
        self._evaluate(task, raw, run, settings, 0, seconds, averaged=len(snapshots))
        if settings.selection is not None and run.best is before:  # not better: back to the last weights
            raw.load_state_dict(last)

    @staticmethod
    def _patience_spent(run: Progress, settings: Settings) -> bool:
        patience = settings.selection.patience if settings.selection else None
        return bool(patience) and run.since_best >= patience

    def _trained(self, raw: nn.Module, run: Progress, elapsed: float, tokens_at_start: int) -> Trained:
        return Trained(raw, run.step, run.seconds + elapsed, (run.tokens - tokens_at_start) / max(elapsed, 1e-9),
                       run.history)

    def save(self, record: Record, trained: Trained, metrics: dict[str, Any]) -> Path:
        """Write the served checkpoint (rank 0): the trainer's record and metrics, the loop's facts, the recipe."""
        config = {**record.config, "training": {
            "steps": trained.steps, "seconds": round(trained.seconds, 1), "precision": self.precision,
            "device": str(self.device), "world_size": self.dist.world_size, "compile": self.args.compile,
            "micro_batch_size": self.args.micro_batch_size, "best_step": trained.best and trained.best["step"]},
            "recipe": recipe(self.args)}
        metrics = {**trained.facts(), "parameters": record.parameters(trained.model), **metrics}
        return save_checkpoint(self.args.out, config, record.weights(trained.model), metrics, record.files)
