"""Every approach the workbench compares, behind one interface (:class:`~workbench.methods.base.Method`)."""

from .atv import ATV
from .base import Intervention, Method, PreparedBatch
from .elicit import ELICIT
from .i2cl import I2CL
from .lora import LoRA
from .prompting import BM25FewShot, FewShot, ZeroShot
from .static import StaticTaskVector

__all__ = [
    "ATV", "BM25FewShot", "ELICIT", "FewShot", "I2CL", "Intervention", "LoRA", "Method", "PreparedBatch",
    "StaticTaskVector", "ZeroShot",
]
