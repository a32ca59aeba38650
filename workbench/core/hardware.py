"""What this machine computes natively, so a slow choice is said before a long job runs.

bfloat16 and float16 on a CPU without the matching instructions (AVX512-BF16 / AMX-BF16, AVX512-FP16 / AMX-FP16;
on Arm the ``bf16`` / ``fphp`` features) are emulated by torch: on this project's 2-core AVX2 AMD EPYC a
``[256, 576] x [576, 1536]`` linear layer took 56 ms in bf16 against 7.6 ms in float32 (7.4x slower), while on an
AVX512 machine with native bf16 the same model ran 1.85x *faster* in bf16 (``benchmarks/dtype_speed.py``). The
study's ``--dtype bfloat16`` and the presets' bf16 generator precision assume the second kind of machine.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch

#: per half precision, the /proc/cpuinfo flags (x86) or features (Arm) of native support
NATIVE_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16", "bf16"), torch.float16: ("avx512_fp16", "amx_fp16", "fphp")}


class SlowOnThisCPU(UserWarning):
    """A half precision this CPU emulates (several times slower than float32 here)."""


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm); None where unknown."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def native_on_cpu(dtype: torch.dtype) -> bool:
    """Whether this CPU computes `dtype` natively (float32: always; unknown flags: assumed so)."""
    flags = cpu_flags()
    if dtype not in NATIVE_FLAGS or flags is None:
        return True
    return any(f in flags for f in NATIVE_FLAGS[dtype])


def warn_if_emulated(dtype: torch.dtype, device: torch.device | str, what: str) -> bool:
    """Warn (:class:`SlowOnThisCPU`) when `what` runs in a half precision this CPU emulates; returns whether it
    warned."""
    if torch.device(device).type != "cpu" or native_on_cpu(dtype):
        return False
    name = str(dtype).replace("torch.", "")
    warnings.warn(f"{what} in {name} on a CPU without native {name} instructions (none of "
                  f"{', '.join(NATIVE_FLAGS[dtype])} in /proc/cpuinfo): torch emulates it, several times slower than "
                  f"float32 here (7.4x for a linear layer on an AVX2 EPYC); use float32 on this machine",
                  SlowOnThisCPU, stacklevel=3)
    return True
