"""The processes one launch started (``accelerate launch --num_processes N``, ``torchrun --nproc_per_node N``): who
this process is, and the points where they wait for each other without hanging on a dead or failed one.

Module contents: :func:`current_world` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (what both launchers set;
a plain ``python`` run is a world of one and touches nothing of :mod:`torch.distributed`) and, in a world of more
than one, joins the process group once (gloo for the control messages, with a timeout:
``WORKBENCH_DIST_TIMEOUT`` seconds, default :data:`DEFAULT_TIMEOUT_S`). :meth:`World.step` wraps a stage: when it
raises in one process, that process tells the others before re-raising, so every process stops with an error naming
the failed one instead of waiting in the next collective (a killed process: its peers' collective fails on the
closed connection, and the launcher stops them). :func:`single_process_env` is the environment for a child process
that must run alone (a training subprocess, a notebook kernel).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

#: How long a process waits for the others at one step (the longest: rank 0 fitting the baselines or training the
#: study's generator while the others wait). ``WORKBENCH_DIST_TIMEOUT`` (seconds) overrides it.
DEFAULT_TIMEOUT_S = 3 * 3600
#: Variables the launchers set; a child process without them runs as a world of one.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                    "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an int (the launcher sets it)") from None


def timeout_seconds() -> float:
    """``WORKBENCH_DIST_TIMEOUT`` (a positive number of seconds) or :data:`DEFAULT_TIMEOUT_S`."""
    value = os.environ.get("WORKBENCH_DIST_TIMEOUT")
    if value is None:
        return float(DEFAULT_TIMEOUT_S)
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"WORKBENCH_DIST_TIMEOUT={value!r}: give a positive number of seconds")
    return seconds


@dataclass
class World:
    """This process's place among the launched ones (``size == 1``: a plain run; nothing is synchronised)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: Any = field(default=None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self) -> str | None:
        """The accelerator this process should use (``cuda:<local rank>`` when there are GPUs), else None."""
        return f"cuda:{self.local_rank}" if self.size > 1 and torch.cuda.is_available() else None

    def sync(self, label: str, ok: bool = True) -> None:
        """Wait for every process at `label`; RuntimeError naming the process(es) that arrived failed."""
        if self.size == 1:
            return
        import torch.distributed as dist

        flag = torch.tensor([0 if ok else 1], dtype=torch.int32)
        flags = [torch.zeros_like(flag) for _ in range(self.size)]
        dist.all_gather(flags, flag, group=self.group)
        failed = [r for r, f in enumerate(flags) if int(f.item())]
        if failed and ok:
            raise RuntimeError(f"process {', '.join(map(str, failed))} of {self.size} failed at step {label!r} "
                               f"(its error is in the launch's output); process {self.rank} stops too")

    @contextlib.contextmanager
    def step(self, label: str) -> Iterator[None]:
        """Run a stage, then :meth:`sync`; if it raises here, the others learn it at the same point."""
        try:
            yield
        except BaseException:
            if self.size > 1:
                with contextlib.suppress(Exception):  # the peers may be gone already; the original error matters
                    self.sync(label, ok=False)
            raise
        self.sync(label)


_WORLD: World | None = None


def world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``; 1 for a plain run), without joining them."""
    return max(1, _env_int("WORLD_SIZE", 1))


def current_world() -> World:
    """This process's :class:`World` (joined once: the process group is made at the first call with
    ``WORLD_SIZE > 1``, or reused when accelerate made it, with a gloo group of its own for the control messages)."""
    global _WORLD
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return World()
    if _WORLD is not None and _WORLD.size == size:
        return _WORLD
    import torch.distributed as dist

    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < size:
        raise ValueError(f"RANK={rank} is not in 0..{size - 1} (WORLD_SIZE={size})")
    timeout = datetime.timedelta(seconds=timeout_seconds())
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timeout)
    group = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo", timeout=timeout)
    _WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=local, group=group)
    return _WORLD


def single_process_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) without the launcher's variables: a child started with it runs alone."""
    base = dict(os.environ if env is None else env)
    return {k: v for k, v in base.items() if k not in LAUNCH_VARIABLES and not k.startswith("TORCHELASTIC_")}


@contextlib.contextmanager
def outside_world() -> Iterator[None]:
    """Within the block, ``os.environ`` lacks the launcher's variables (for children that inherit it, such as a
    notebook kernel); restored afterwards."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(single_process_env(saved))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
