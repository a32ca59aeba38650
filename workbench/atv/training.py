"""Training an ATV generator on a frozen LLM: ``wb.train_atv(lm, generator, tasks, wb.TrainConfig(...))``.

Defaults follow the paper / official code: Adam (not AdamW), lr 5e-4, weight decay 1e-5, no schedule, 15 epochs,
λ = 1e-3, 90 train items per task, each under its task's 3 templates with the answer prefix "A:"; one *item* per
optimizer step (its 3 templates averaged, as the official loop does), injection at every layer on the last prompt
token. ``batch_size`` counts items: a step sees ``3 * batch_size`` sequences and averages their per-example losses.

Speed (same objective): the prefix-cached fast path (:mod:`workbench.atv.fastpath`, prefixes computed before the
first epoch), the small model's texts run in length buckets, and torch's fused Adam. ``generator_precision``
("bfloat16"/"float16") additionally runs the generator under autocast (mixed precision; weights and the LLM stay
in their dtype) -- off by default, on in the ``cpu-demo`` preset.

Tasks are given by name, as Task objects or a mix (:func:`workbench.tasks.registry.resolve_tasks`); their names are
recorded in ``TrainConfig.tasks``, ``df.attrs["config"]`` and the generator's ``generator.json``
(``gen.meta["tasks"]``).
Checkpoint folders (:mod:`workbench.atv.checkpoints`) are locked for the whole run, never cleared by a fresh run
(earlier checkpoints need ``resume=True``), and a resume refuses a checkpoint trained with another config or
another generator architecture; they hold no pickle (:mod:`workbench.atv.training_state`).

Runs under 🤗 accelerate: ``accelerate launch --num_processes N script.py`` splits each global batch over the
processes (``split_batches``), gradients are averaged by DDP, so N processes reach the weights one process reaches
with the same global batch (``batch_size`` must be divisible by N). Presets live in :mod:`workbench.atv.presets`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.atv.checkpoints import (
    EPOCH,
    GENERATOR,
    check_checkpoint_dir,
    check_epochs_free,
    check_resume,
    checkpoint_lock,
    latest_checkpoint,
    resume_from,
    save_checkpoint,
)
from workbench.atv.epoch_choice import EpochKeeper
from workbench.atv.examples import Example, tokenize_pair, training_examples
from workbench.atv.fastpath import PrefixStore, fast_pair_losses, head_lengths
from workbench.atv.generator import ATVGenerator, check_compatible
from workbench.atv.loss import pair_losses
from workbench.atv.train_config import ENCODER_MODES, GENERATOR_PRECISIONS, TrainConfig  # noqa: F401 (re-exported)
from workbench.core.encoders import SelfEncoder
from workbench.core.hardware import warn_if_emulated
from workbench.core.interventions import Injection, resolve_layers
from workbench.core.remote import require_local
from workbench.tasks.registry import Task, TaskSpec, resolve_tasks

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

VALID_BATCH = 24


# --------------------------------------------------------------------------------------------- batching
class EpochBatches(torch.utils.data.Sampler):
    """Batches of item indices, reshuffled per epoch from (seed, epoch) alone, so a resumed run sees the same."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def __iter__(self):
        order = torch.randperm(self.n,
                               generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)).tolist()
        return iter([order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class Batcher:
    """Tokenized examples, their generator inputs (texts or cached small-model states) and the loss of a batch."""

    def __init__(self, lm: LanguageModel, examples: list[Example], config: TrainConfig, store: PrefixStore, tag: str):
        self.lm, self.examples, self.config, self.store, self.tag = lm, examples, config, store, tag
        self.pairs = [tokenize_pair(lm, ex.prompt(lm), ex.target) for ex in examples]
        for ex, (prompt, answer) in zip(examples, self.pairs):
            if len(prompt) + len(answer) > lm.max_length:
                raise ValueError(f"{ex.split} item {ex.item} of task {ex.task!r} (template {ex.template}) has "
                                 f"{len(prompt) + len(answer)} tokens with its answer, more than {lm.name}'s "
                                 f"{lm.max_length} positions")
        prefixes = [p[:-1] for p, _ in self.pairs]
        self.heads = head_lengths(prefixes, [(ex.task, ex.template) for ex in examples])
        self.bodies = head_lengths(prefixes, [ex.group for ex in examples])  # an item's templates may share more
        self.states: torch.Tensor | None = None

    def key(self, i: int) -> tuple:
        """Example `i`'s name in the prefix store: its prefix tokens (a store shared by several trainings of one
        model, see :func:`train_atv`'s `prefix_store`, then reuses what another training computed)."""
        return ("prefix", *self.pairs[i][0][:-1])

    def cache_states(self, generator: ATVGenerator) -> None:
        """Frozen small model: its pooled states, computed once."""
        texts = [ex.generator_text for ex in self.examples]
        with torch.no_grad(), generator_autocast(self.config.generator_precision, self.lm.device):
            self.states = torch.cat([generator.encoder.encode(texts[i: i + VALID_BATCH])
                                     for i in range(0, len(texts), VALID_BATCH)])

    def self_block(self, generator: ATVGenerator) -> int | None:
        """K when `generator` reads ``self:K`` states that the prefix pass yields (fast path, last-token pooling of
        this large model, reading the prompts the large model reads): :meth:`warm` computes them; else None."""
        enc, cfg = generator.encoder, self.config
        if not (isinstance(enc, SelfEncoder) and enc.lm is self.lm and enc.pooling == "last" and cfg.fast_path
                and cfg.positions == "last"):
            return None
        same = all(ex.generator_text == ex.text for ex in self.examples)
        return enc.block if same and max(len(p) for p, _ in self.pairs) <= enc.max_length else None

    def warm(self, progress: bool = False, self_block: int | None = None) -> float:
        """Compute the prefix caches of all examples now (within the store's budget); with `self_block` = K, also
        the ``self:K`` states of the prompts, from the same pass (:meth:`PrefixStore.fill_with_states`). Returns
        the seconds taken."""
        t0 = time.perf_counter()
        keys = [self.key(i) for i in range(len(self.pairs))]
        if self_block is None:
            self.store.fill(self.lm, keys, [p[:-1] for p, _ in self.pairs], self.heads, progress, self.bodies)
        else:
            self.states = self.store.fill_with_states(self.lm, keys, [p for p, _ in self.pairs], self_block,
                                                      self.heads, progress, self.bodies)
        return time.perf_counter() - t0

    def vectors(self, generator: Any, idx: Sequence[int]) -> torch.Tensor:
        """Generator vectors [B, L, d] (in the LLM's dtype) for examples `idx`; a text several examples share (the
        official input is the same for an item's templates) is encoded once, as the official loop does."""
        with generator_autocast(self.config.generator_precision, self.lm.device):
            if self.states is not None:
                vectors = generator(self.states[list(idx)])
            else:
                texts = [self.examples[i].generator_text for i in idx]
                unique = {t: j for j, t in enumerate(dict.fromkeys(texts))}
                vectors = (generator(texts) if len(unique) == len(texts)
                           else generator(list(unique))[[unique[t] for t in texts]])
        return vectors.to(self.lm.dtype)

    def losses(self, generator: Any, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.vectors(generator, idx)
        if not torch.isfinite(vectors.detach()).all():  # reported by the caller as a non-finite loss
            return torch.full((len(idx),), math.nan), torch.zeros(len(idx), dtype=torch.bool)
        cfg = self.config
        injection = Injection(vectors, cfg.scale, cfg.layers, cfg.positions)
        pairs = [self.pairs[i] for i in idx]
        if cfg.fast_path and cfg.positions == "last":
            return fast_pair_losses(self.lm, pairs, injection, self.store, [self.key(i) for i in idx],
                                    [self.heads[i] for i in idx])
        return pair_losses(self.lm, pairs, injection)


def generator_autocast(precision: str, device: torch.device) -> Any:
    """``torch.autocast`` for a mixed-precision generator (weights stay float32), a no-op for "float32"."""
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, precision))


def group_items(examples: list[Example]) -> list[list[int]]:
    """Example indices per item (its templates), in first-seen order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, ex in enumerate(examples):
        groups.setdefault(ex.group, []).append(i)
    return list(groups.values())


def validation_scores(generator: ATVGenerator, batcher: Batcher | None) -> tuple[float, float]:
    """Mean valid loss and first-token accuracy (eval mode, no grad); NaN without validation items."""
    if batcher is None:
        return math.nan, math.nan
    was_training = generator.training
    generator.eval()
    losses, correct = [], []
    with torch.no_grad():
        for s in range(0, len(batcher.examples), VALID_BATCH):
            lo, co = batcher.losses(generator, range(s, min(s + VALID_BATCH, len(batcher.examples))))
            losses.append(lo)
            correct.append(co)
    generator.train(was_training)
    return float(torch.cat(losses).mean()), float(torch.cat(correct).float().mean())


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    """Adam (the paper's and official code's optimizer), with torch's fused kernel where the device has one: the
    same update in one pass over the weights (``benchmarks/train_components.py`` times both)."""
    try:
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


# --------------------------------------------------------------------------------------------- training steps
def make_accelerator(lm: LanguageModel) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    return Accelerator(cpu=lm.device.type == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def checked_config(config: TrainConfig | None, tasks: list[Task]) -> TrainConfig:
    """A validated copy of `config` whose ``tasks`` are the names of the tasks trained on."""
    config = (config or TrainConfig()).validate()
    names = tuple(t.name for t in tasks)
    if config.tasks and tuple(config.tasks) != names:
        raise ValueError(f"config.tasks {list(config.tasks)} differ from the tasks given to train_atv {list(names)}")
    return dataclasses.replace(config, tasks=names)


def build_examples(tasks: list[Task], config: TrainConfig) -> tuple[list[Example], list[list[int]], list[Example]]:
    """(train examples, their items as example-index groups, valid examples) for `config`."""
    train = training_examples(tasks, config.n_train, config.seed, config.prefix, config.generator_input)
    groups = group_items(train)
    if len(groups) < config.batch_size:
        raise ValueError(f"only {len(groups)} training items ({len(train)} examples) "
                         f"for batch_size={config.batch_size}: "
                         "lower batch_size or raise n_train")
    valid = (training_examples(tasks, config.valid_items, config.seed, config.prefix, config.generator_input,
                               split="valid") if config.valid_items else [])
    return train, groups, valid


def build_batchers(lm: LanguageModel, generator: ATVGenerator, train: list[Example], valid: list[Example],
                   config: TrainConfig, progress: bool,
                   store: PrefixStore | None = None) -> tuple[Batcher, Batcher | None, PrefixStore, float]:
    """Tokenized train / valid batchers sharing one prefix store; a frozen (or ``fixed``: ``self:K``) small model's
    states cached; the prefix caches computed (fast path; a ``self:K`` generator reading the prompts gets its states
    from that pass, see :meth:`Batcher.self_block`). Returns them with the store and the seconds the prefix pass
    took. `store`: a prefix store to use (and fill) instead of a new one of ``config.cache_budget_mb``."""
    store = PrefixStore(config.cache_budget_mb) if store is None else store.bind(lm)
    batcher = Batcher(lm, train, config, store, "train")
    valid_batcher = Batcher(lm, valid, config, store, "valid") if valid else None
    if config.encoder_train_mode == "frozen":
        generator.encoder.requires_grad_(False)
        generator.eval()
    batchers = [b for b in (batcher, valid_batcher) if b is not None]
    shared = {id(b): b.self_block(generator) for b in batchers}  # self:K states from the prefix pass
    if config.encoder_train_mode == "frozen" or generator.encoder.fixed:  # self:K: the states never change
        for b in batchers:
            if shared[id(b)] is None:
                b.cache_states(generator)
    prefix_seconds = 0.0
    if config.fast_path and config.positions == "last":
        prefix_seconds = sum(b.warm(progress, shared[id(b)]) for b in batchers)
    return batcher, valid_batcher, store, prefix_seconds


def set_up_optimizer(generator: ATVGenerator, config: TrainConfig, n_items: int,
                     accelerator: Any) -> tuple[Any, torch.optim.Optimizer, Any, EpochBatches]:
    """(prepared model, optimizer, loader of item batches, its epoch sampler)."""
    optimizer = make_optimizer([p for p in generator.parameters() if p.requires_grad], config)
    sampler = EpochBatches(n_items, config.batch_size, config.seed)
    loader = torch.utils.data.DataLoader(list(range(n_items)), batch_sampler=sampler, collate_fn=list)
    model, optimizer, loader = accelerator.prepare(generator, optimizer, loader)
    return model, optimizer, loader, sampler


def run_epoch(model: Any, batcher: Batcher, groups: list[list[int]], loader: Any, optimizer: torch.optim.Optimizer,
              accelerator: Any, epoch: int, config: TrainConfig, ckpt: Path | None, progress: bool) -> float:
    """One pass over the item batches (one optimizer step each); returns the mean train loss. A non-finite loss
    stops training with a FloatingPointError naming the epoch, the step and the last good checkpoint."""
    model.train(config.encoder_train_mode == "train")
    total, count = 0.0, 0
    steps = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress)
    for step, batch in enumerate(steps):
        losses, _ = batcher.losses(model, [i for g in batch for i in groups[g]])
        loss = losses.mean()
        if not torch.isfinite(loss):
            last = latest_checkpoint(ckpt) if ckpt else None
            where = f"last good checkpoint kept in {last}" if last else "no checkpoint written"
            raise FloatingPointError(f"non-finite training loss or vectors ({float(loss)}) at epoch {epoch}, step "
                                     f"{step} (λ={config.scale}, lr={config.lr}); {where}")
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        total += float(accelerator.reduce(loss.detach(), "mean")) * len(batch)
        count += len(batch)
        steps.set_postfix(loss=f"{total / count:.4f}")
    return total / count


def history_row(epoch: int, train_loss: float, seconds: float, n_examples: int,
                validation: tuple[float, float]) -> dict[str, Any]:
    return {"epoch": epoch, "train_loss": train_loss, "valid_loss": validation[0], "valid_acc": validation[1],
            "seconds": seconds, "examples_per_s": n_examples / seconds}


def train_atv(
    lm: LanguageModel,
    generator: ATVGenerator,
    tasks: TaskSpec,
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[pd.DataFrame], Any] | None = None,
    progress: bool = True,
    accelerator: Any = None,
    prefix_store: PrefixStore | None = None,
) -> pd.DataFrame:
    """Train `generator` to steer the frozen `lm` on `tasks` (a task name, a Task, or a list mixing them; see
    :func:`workbench.tasks.registry.resolve_tasks`); returns one row per epoch (epoch, train_loss, valid_loss,
    valid_acc, seconds, examples_per_s); ``df.attrs`` holds the config (``tasks``: the names trained on), the
    validation before training and prefix-cache statistics (``seconds``: the prefix pass before the first epoch,
    not in the epochs' seconds). `callback(df)` runs after every epoch (e.g. a live plot).

    With a checkpoint folder a checkpoint is written atomically after every epoch and the folder is locked for the
    whole run (a second training on it fails at once). A folder that already holds checkpoints needs
    ``resume=True`` (they are never deleted); ``resume=True`` continues from the newest complete one and refuses,
    before any training: a folder without one, a checkpoint trained with another config (only ``epochs`` may
    change) or made by a generator of another architecture (encoder, pooling, bottleneck, LoRA, input_norm, dtype),
    and ``epochs`` below the epochs the checkpoint holds (naming both; ``epochs`` equal to them trains nothing and
    returns the checkpoint's history, the generator holding its weights). An ``epoch-NNN`` entry that the run would
    write and that is not a complete checkpoint (a partial copy, a user's folder) is refused up front too, as are
    checkpoints of the older pickle format (never loaded).

    `prefix_store`: a :class:`~workbench.atv.fastpath.PrefixStore` shared by several trainings of this model (the
    frozen model's prefix caches, named by their tokens): each prompt's prefix is computed once for all of them
    (the ablations train many generators on the same examples); a store holding another model's caches is refused.
    Default: a new store of ``config.cache_budget_mb``."""
    if prefix_store is not None and not isinstance(prefix_store, PrefixStore):
        raise ValueError(f"prefix_store must be a workbench.atv.fastpath.PrefixStore, "
                         f"got {type(prefix_store).__name__}")
    task_list = resolve_tasks(tasks)
    config = checked_config(config, task_list)
    if not isinstance(generator, ATVGenerator):
        raise ValueError(f"generator must be a wb.ATVGenerator, got {type(generator).__name__}")
    check_compatible(generator.describe(), lm, "passed to train_atv")
    resolve_layers(config.layers, lm.num_layers)
    folder = checkpoint_dir or config.checkpoint_dir
    ckpt = Path(folder) if folder else None
    check_checkpoint_dir(ckpt, resume)  # fail before any work
    require_local(lm, "training the ATV generator through the model")
    accelerator = accelerator or make_accelerator(lm)
    if config.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the "
                         f"{accelerator.num_processes} processes")
    main = accelerator.is_main_process
    with checkpoint_lock(ckpt) if ckpt is not None and main else contextlib.nullcontext():
        last = check_checkpoint_dir(ckpt, resume)  # again, now that the folder is ours
        if last is not None:
            check_compatible(ATVGenerator.read_meta(last / GENERATOR), lm, last / GENERATOR)
            check_resume(last, config, generator)
        check_epochs_free(ckpt, 1 if last is None else int(EPOCH.match(last.name)[1]) + 1, config.epochs)
        return _train(lm, generator, task_list, config, ckpt, last, callback, progress and main, accelerator,
                      prefix_store)


def _train(lm: LanguageModel, generator: ATVGenerator, tasks: list[Task], config: TrainConfig, ckpt: Path | None,
           last: Path | None, callback: Callable[[pd.DataFrame], Any] | None, progress: bool,
           accelerator: Any, prefix_store: PrefixStore | None = None) -> pd.DataFrame:
    """The training steps of :func:`train_atv`, its arguments checked."""
    train, groups, valid = build_examples(tasks, config)
    warn_if_emulated(getattr(torch, config.generator_precision), lm.device,
                     "the generator's mixed precision (TrainConfig.generator_precision)")
    torch.manual_seed(config.seed)
    generator.meta = {"scale": config.scale, "layers": config.to_dict()["layers"], "positions": config.positions,
                      "generator_input": config.generator_input, "tasks": list(config.tasks),
                      "train_config": config.to_dict()}
    batcher, valid_batcher, store, prefix_seconds = build_batchers(lm, generator, train, valid, config, progress,
                                                                   prefix_store)
    model, optimizer, loader, sampler = set_up_optimizer(generator, config, len(groups), accelerator)
    history, start = resume_from(last, generator, optimizer) if last is not None else ([], 1)
    initial = (history[0].get("initial") if history
               else dict(zip(("valid_loss", "valid_acc"), validation_scores(generator, valid_batcher))))
    keeper = EpochKeeper(config.keep_epoch, ckpt)
    epochs = tqdm(range(start, config.epochs + 1), desc="epochs", disable=not progress, initial=start - 1,
                  total=config.epochs)
    for epoch in epochs:
        sampler.epoch = epoch
        t0 = time.perf_counter()
        train_loss = run_epoch(model, batcher, groups, loader, optimizer, accelerator, epoch, config, ckpt, progress)
        scores = validation_scores(generator, valid_batcher)
        row = history_row(epoch, train_loss, time.perf_counter() - t0, len(train), scores)
        history.append({**row, **({"initial": initial} if not history else {})})
        epochs.set_postfix(train=f"{row['train_loss']:.3f}", valid=f"{row['valid_loss']:.3f}",
                           acc=f"{row['valid_acc']:.2f}")
        keeper.after_epoch(generator, history)
        if ckpt is not None and accelerator.is_main_process:
            save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, epoch, history,
                            keep=keeper.protected(history))
        accelerator.wait_for_everyone()
        if callback is not None and accelerator.is_main_process:
            callback(history_frame(history, config, initial, store, prefix_seconds))
    kept = keeper.restore(generator, history) if history else None
    generator.meta["kept_epoch"] = kept
    generator.eval()
    df = history_frame(history, config, initial, store, prefix_seconds)
    df.attrs["kept_epoch"] = kept
    return df


def history_frame(history: list[dict], config: TrainConfig, initial: dict, store: PrefixStore,
                  prefix_seconds: float = 0.0) -> pd.DataFrame:
    df = pd.DataFrame([{k: v for k, v in h.items() if k != "initial"} for h in history],
                      columns=["epoch", "train_loss", "valid_loss", "valid_acc", "seconds", "examples_per_s"])
    df.attrs.update(config=config.to_dict(), initial=initial, prefix_cache={**store.stats(), "seconds": prefix_seconds})
    return df
