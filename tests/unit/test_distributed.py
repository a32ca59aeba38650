"""Two CPU processes (gloo) reach the weights one process reaches with the same global batch.

The processes are started with ``torchrun`` (``python -m torch.distributed.run``): on CPU, ``accelerate launch
--cpu --num_processes 2`` starts a single process (its multi-CPU mode wants an MPI config), while accelerate's
``Accelerator(cpu=True)`` picks up torchrun's environment (MULTI_CPU, gloo). On GPUs ``accelerate launch
--multi_gpu --num_processes N`` drives the same code.

Tolerance: atol 1e-5 on the generator's vectors and on the losses' relative difference 1e-5 (gradients are averaged
by an all-reduce, so only float rounding differs). Dropout is off (encoder_train_mode="eval"): each process has its
own dropout RNG stream, so with dropout on the runs are only equal in distribution.
This file is also the worker script: ``torchrun --nproc_per_node 2 tests/unit/test_distributed.py OUT``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

CONFIG = {"epochs": 2, "n_train": 8, "batch_size": 4, "scale": 1.0, "lr": 1e-2, "valid_items": 2,
          "encoder_train_mode": "eval"}


def run(out: Path | None = None):
    from test_training import TASK, WORDS, generator

    from workbench.atv.examples import training_examples
    from workbench.atv.training import TrainConfig, train_atv
    from workbench.core.testing import tiny_model

    torch.set_num_threads(1)
    lm = tiny_model("llama", texts=WORDS + ["Review", "Text", "Q"])
    gen = generator(lm)
    df = train_atv(lm, gen, [TASK], TrainConfig(**CONFIG), progress=False)
    with torch.no_grad():
        vectors = gen.eval().vectors([e.generator_text for e in training_examples([TASK], n_train=4)])
    if out is not None and int(os.environ.get("RANK", "0")) == 0:
        from accelerate import PartialState

        torch.save({"vectors": vectors, "train_loss": df.train_loss.tolist(),
                    "processes": PartialState().num_processes}, out)
    return vectors, df.train_loss.tolist()


def test_two_processes_match_one(tmp_path):
    out = tmp_path / "two.pt"
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    # --standalone: a c10d rendezvous on localhost:0, i.e. the OS picks a free port (no fixed port to collide on)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = torch.load(out)
    assert two["processes"] == 2
    vectors, losses = run()
    assert torch.allclose(two["vectors"], vectors, atol=1e-5), float((two["vectors"] - vectors).abs().max())
    assert json.dumps(losses) and all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(two["train_loss"], losses))


if __name__ == "__main__":
    run(Path(sys.argv[1]))
