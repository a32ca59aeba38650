"""Every approach the workbench compares, behind one interface (:class:`~workbench.methods.base.Method`).

Canonical names, display labels and classes: :mod:`workbench.methods.names`.
"""

from workbench.core.interventions import Intervention
from workbench.methods.atv import ATV
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.elicit import ELICIT
from workbench.methods import exports
from workbench.methods.i2cl import I2CL
from workbench.methods.imported import StaticVectors
from workbench.methods.lora import LoRA
from workbench.methods.names import METHODS, display_label, method_class
from workbench.methods.prompting import BM25FewShot, FewShot, ZeroShot
from workbench.methods.static import StaticTaskVector

__all__ = [
    "ATV", "BM25FewShot", "ELICIT", "FewShot", "I2CL", "Intervention", "LoRA", "METHODS", "Method", "PreparedBatch",
    "StaticTaskVector", "StaticVectors", "ZeroShot", "display_label", "exports", "method_class",
]
