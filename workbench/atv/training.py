"""Training an ATV generator on a frozen LLM: ``wb.train_atv(lm, generator, tasks, wb.TrainConfig(...))``.

Defaults follow the paper / official code: Adam (not AdamW), lr 5e-4, weight decay 1e-5, no schedule, 15 epochs,
λ = 1e-3, 90 train items per task, each under its task's 3 templates with the answer prefix "A:"; one *item* per
optimizer step (its 3 templates averaged, as the official loop does), injection at every layer on the last prompt
token. ``batch_size`` counts items: a step sees ``3 * batch_size`` sequences and averages their per-example losses.

Speed (same objective): the prefix-cached fast path (:mod:`workbench.atv.fastpath`, prefixes computed before the
first epoch), the small model's texts run in length buckets, and torch's fused Adam. ``generator_precision``
("bfloat16"/"float16") additionally runs the generator under autocast (mixed precision; weights and the LLM stay
in their dtype) -- off by default, on in the ``cpu-demo`` preset.

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

from workbench.atv.checkpoints import STATE, check_resume_config, latest_checkpoint, save_checkpoint, set_rng_state
from workbench.atv.examples import GENERATOR_INPUTS, Example, tokenize_pair, training_examples
from workbench.atv.fastpath import PrefixStore, fast_pair_losses, head_lengths
from workbench.atv.generator import ATVGenerator, check_compatible
from workbench.atv.loss import pair_losses
from workbench.core.interventions import POSITIONS, Injection, resolve_layers
from workbench.tasks.prompts import PREFIXES, TRAIN_PREFIX

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

ENCODER_MODES = ("train", "eval", "frozen")
GENERATOR_PRECISIONS = ("float32", "bfloat16", "float16")
VALID_BATCH = 24


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (recorded with every checkpoint)."""

    lr: float = 5e-4
    weight_decay: float = 1e-5
    epochs: int = 15
    scale: float = 1e-3  # λ
    n_train: int = 90  # items per task (each seen under the task's 3 templates)
    batch_size: int = 1  # items per optimizer step (global, over all processes)
    layers: Any = "all"
    positions: str = "last"
    seed: int = 42
    generator_input: str = "prompt"  # "prompt" (paper) or "official" ("Q: {input} \n A: ")
    prefix: str = TRAIN_PREFIX
    fast_path: bool = True  # prefix-cached loss (positions "last" only)
    cache_budget_mb: float = 2048.0  # memory for prefix caches kept across epochs
    valid_items: int = 8  # valid items per task for valid_loss / valid_acc (0: no validation)
    encoder_train_mode: str = "train"  # "train" (dropout on, official), "eval" (dropout off), "frozen"
    generator_precision: str = "float32"  # or mixed precision: the generator runs under autocast ("bfloat16"/"float16")
    checkpoint_dir: str | None = None

    def validate(self) -> TrainConfig:
        def positive(name: str, integer: bool = False, zero_ok: bool = False) -> None:
            v = getattr(self, name)
            ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
            if isinstance(v, bool) or not ok_type or not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                kind = "int" if integer else "number"
                raise ValueError(f"{name} must be a {'non-negative' if zero_ok else 'positive'} finite {kind}, got {v!r}")

        positive("scale")
        positive("lr")
        positive("weight_decay", zero_ok=True)
        positive("cache_budget_mb", zero_ok=True)
        for name in ("epochs", "n_train", "batch_size"):
            positive(name, integer=True)
        positive("valid_items", integer=True, zero_ok=True)
        choices = {"positions": POSITIONS, "generator_input": GENERATOR_INPUTS, "encoder_train_mode": ENCODER_MODES,
                   "prefix": PREFIXES, "generator_precision": GENERATOR_PRECISIONS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; use one of {allowed}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")  # noqa: TRY004
        Injection(torch.zeros(1, 1), self.scale, self.layers, self.positions)  # layer-spec checks
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = self.layers if isinstance(self.layers, str) else list(self.layers)
        return d


# --------------------------------------------------------------------------------------------- batching
class EpochBatches(torch.utils.data.Sampler):
    """Batches of item indices, reshuffled per epoch from (seed, epoch) alone, so a resumed run sees the same."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)).tolist()
        return iter([order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)])

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


class Batcher:
    """Tokenized examples, their generator inputs (texts or cached small-model states) and the loss of a batch."""

    def __init__(self, lm: LanguageModel, examples: list[Example], config: TrainConfig, store: PrefixStore, tag: str):
        self.lm, self.examples, self.config, self.store, self.tag = lm, examples, config, store, tag
        self.pairs = [tokenize_pair(lm, ex.prompt(lm), ex.target) for ex in examples]
        self.heads = head_lengths([p[:-1] for p, _ in self.pairs], [(ex.task, ex.template) for ex in examples])
        self.states: torch.Tensor | None = None

    def cache_states(self, generator: ATVGenerator) -> None:
        """Frozen small model: its pooled states, computed once."""
        texts = [ex.generator_text for ex in self.examples]
        with torch.no_grad(), generator_autocast(self.config.generator_precision, self.lm.device):
            self.states = torch.cat([generator.encoder.encode(texts[i: i + VALID_BATCH]) for i in range(0, len(texts), VALID_BATCH)])

    def warm(self, progress: bool = False) -> float:
        """Compute the prefix caches of all examples now (within the store's budget); returns the seconds taken."""
        t0 = time.perf_counter()
        self.store.fill(self.lm, [(self.tag, i) for i in range(len(self.pairs))], [p[:-1] for p, _ in self.pairs],
                        self.heads, progress)
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
                vectors = generator(texts) if len(unique) == len(texts) else generator(list(unique))[[unique[t] for t in texts]]
        return vectors.to(self.lm.dtype)

    def losses(self, generator: Any, idx: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        vectors = self.vectors(generator, idx)
        if not torch.isfinite(vectors.detach()).all():  # reported by the caller as a non-finite loss
            return torch.full((len(idx),), math.nan), torch.zeros(len(idx), dtype=torch.bool)
        cfg = self.config
        injection = Injection(vectors, cfg.scale, cfg.layers, cfg.positions)
        pairs = [self.pairs[i] for i in idx]
        if cfg.fast_path and cfg.positions == "last":
            return fast_pair_losses(self.lm, pairs, injection, self.store, [(self.tag, i) for i in idx],
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


def validate(generator: ATVGenerator, batcher: Batcher | None) -> tuple[float, float]:
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


# --------------------------------------------------------------------------------------------- training
def make_accelerator(lm: LanguageModel) -> Any:
    from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs

    return Accelerator(cpu=lm.device.type == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def train_atv(
    lm: LanguageModel,
    generator: ATVGenerator,
    tasks: Sequence[Any],
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[pd.DataFrame], Any] | None = None,
    progress: bool = True,
    accelerator: Any = None,
) -> pd.DataFrame:
    """Train `generator` to steer the frozen `lm` on `tasks`; returns one row per epoch (epoch, train_loss,
    valid_loss, valid_acc, seconds, examples_per_s); ``df.attrs`` holds the config, the validation before training
    and prefix-cache statistics (``seconds``: the prefix pass before the first epoch, not in the epochs' seconds).
    A checkpoint is written atomically after every epoch when a checkpoint folder is given; ``resume=True``
    continues from it. `callback(df)` runs after every epoch (e.g. a live plot)."""
    config = (config or TrainConfig()).validate()
    if not isinstance(generator, ATVGenerator):
        raise ValueError(f"generator must be a wb.ATVGenerator, got {type(generator).__name__}")  # noqa: TRY004
    check_compatible(generator.describe(), lm, "passed to train_atv")
    resolve_layers(config.layers, lm.num_layers)
    train = training_examples(tasks, config.n_train, config.seed, config.prefix, config.generator_input)
    groups = group_items(train)
    if len(groups) < config.batch_size:
        raise ValueError(f"only {len(groups)} training items ({len(train)} examples) for batch_size={config.batch_size}: "
                         "lower batch_size or raise n_train")
    ckpt = Path(checkpoint_dir or config.checkpoint_dir) if (checkpoint_dir or config.checkpoint_dir) else None
    if resume and ckpt is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    accelerator = accelerator or make_accelerator(lm)
    if config.batch_size % accelerator.num_processes:
        raise ValueError(f"batch_size={config.batch_size} must be divisible by the {accelerator.num_processes} processes")

    torch.manual_seed(config.seed)
    store = PrefixStore(config.cache_budget_mb)
    batcher = Batcher(lm, train, config, store, "train")
    valid = (Batcher(lm, training_examples(tasks, config.valid_items, config.seed, config.prefix, config.generator_input,
                                           split="valid"), config, store, "valid") if config.valid_items else None)
    generator.meta = {"scale": config.scale, "layers": config.to_dict()["layers"], "positions": config.positions,
                      "generator_input": config.generator_input, "train_config": config.to_dict()}
    if config.encoder_train_mode == "frozen":
        generator.encoder.requires_grad_(False)
        generator.eval()
        for b in (batcher, valid):
            if b is not None:
                b.cache_states(generator)
    prefix_seconds = 0.0
    if config.fast_path and config.positions == "last":
        prefix_seconds = sum(b.warm(progress and accelerator.is_main_process) for b in (batcher, valid) if b is not None)
    params = [p for p in generator.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, config)
    sampler = EpochBatches(len(groups), config.batch_size, config.seed)
    loader = torch.utils.data.DataLoader(list(range(len(groups))), batch_sampler=sampler, collate_fn=list)
    model, optimizer, loader = accelerator.prepare(generator, optimizer, loader)

    history: list[dict] = []
    start = 1
    last = latest_checkpoint(ckpt) if (resume and ckpt) else None
    if last is not None:
        import safetensors.torch

        state = torch.load(last / STATE, weights_only=False)
        check_resume_config(ATVGenerator.read_meta(last / "generator").get("train_config", {}), config)
        safetensors.torch.load_model(generator, str(last / "generator" / "generator.safetensors"))
        optimizer.load_state_dict(state["optimizer"])
        history, start = state["history"], state["epoch"] + 1
        set_rng_state(state["rng"])
    initial = history[0].get("initial") if history else dict(zip(("valid_loss", "valid_acc"), validate(generator, valid)))

    train_mode = config.encoder_train_mode == "train"
    epochs = tqdm(range(start, config.epochs + 1), desc="epochs", disable=not progress or not accelerator.is_main_process,
                  initial=start - 1, total=config.epochs)
    for epoch in epochs:
        sampler.epoch = epoch
        model.train(train_mode)
        t0, total, count = time.perf_counter(), 0.0, 0
        steps = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress or not accelerator.is_main_process)
        for step, batch in enumerate(steps):
            idx = [i for g in batch for i in groups[g]]
            losses, _ = batcher.losses(model, idx)
            loss = losses.mean()
            if not torch.isfinite(loss):
                where = f"last good checkpoint kept in {latest_checkpoint(ckpt)}" if ckpt and latest_checkpoint(ckpt) else "no checkpoint written"
                raise FloatingPointError(f"non-finite training loss or vectors ({float(loss)}) at epoch {epoch}, step "
                                         f"{step} (λ={config.scale}, lr={config.lr}); {where}")
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            total += float(accelerator.reduce(loss.detach(), "mean")) * len(batch)
            count += len(batch)
            steps.set_postfix(loss=f"{total / count:.4f}")
        seconds = time.perf_counter() - t0
        valid_loss, valid_acc = validate(generator, valid)
        row = {"epoch": epoch, "train_loss": total / count, "valid_loss": valid_loss, "valid_acc": valid_acc,
               "seconds": seconds, "examples_per_s": len(train) / seconds}
        history.append({**row, **({"initial": initial} if not history else {})})
        epochs.set_postfix(train=f"{row['train_loss']:.3f}", valid=f"{valid_loss:.3f}", acc=f"{valid_acc:.2f}")
        if ckpt is not None and accelerator.is_main_process:
            save_checkpoint(ckpt, accelerator.unwrap_model(model), optimizer, epoch, history)
        accelerator.wait_for_everyone()
        if callback is not None and accelerator.is_main_process:
            callback(history_frame(history, config, initial, store, prefix_seconds))
    generator.eval()
    return history_frame(history, config, initial, store, prefix_seconds)


def history_frame(history: list[dict], config: TrainConfig, initial: dict, store: PrefixStore,
                  prefix_seconds: float = 0.0) -> pd.DataFrame:
    df = pd.DataFrame([{k: v for k, v in h.items() if k != "initial"} for h in history],
                      columns=["epoch", "train_loss", "valid_loss", "valid_acc", "seconds", "examples_per_s"])
    df.attrs.update(config=config.to_dict(), initial=initial, prefix_cache={**store.stats(), "seconds": prefix_seconds})
    return df
