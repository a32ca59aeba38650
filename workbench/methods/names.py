"""The one place that names the methods: canonical name -> display label and class.

Every :class:`~workbench.methods.base.Method` subclass has one canonical ``name`` (lower case, hyphenated); results,
run configs and the eval CLI use it. Tables and figures show the display label instead:

==============  ====================  ==========================================
name            label                 class
==============  ====================  ==========================================
``zero-shot``   zero-shot             :class:`~workbench.methods.prompting.ZeroShot`
``few-shot``    ``{k}-shot``          :class:`~workbench.methods.prompting.FewShot`
``bm25``        ``BM25 {k}-shot``     :class:`~workbench.methods.prompting.BM25FewShot`
``static-tv``   static TV             :class:`~workbench.methods.static.StaticTaskVector`
``elicit``      ELICIT                :class:`~workbench.methods.elicit.ELICIT`
``i2cl``        I2CL                  :class:`~workbench.methods.i2cl.I2CL`
``lora``        LoRA                  :class:`~workbench.methods.lora.LoRA`
``atv``         ATV (ATV-Light for a  :class:`~workbench.methods.atv.ATV`
                light generator)
==============  ====================  ==========================================

``static-vectors`` (label "static vectors", :class:`~workbench.methods.imported.StaticVectors`) evaluates vectors made
elsewhere (a llama.cpp / repeng GGUF, a safetensors file, an lm-eval ``.pt``).

``{k}`` is the method's number of demonstrations (``k-shot`` when only the name is given).
"""

from __future__ import annotations

from workbench.methods.atv import ATV
from workbench.methods.base import Method
from workbench.methods.elicit import ELICIT
from workbench.methods.i2cl import I2CL
from workbench.methods.imported import StaticVectors
from workbench.methods.lora import LoRA
from workbench.methods.prompting import BM25FewShot, FewShot, ZeroShot
from workbench.methods.static import StaticTaskVector

#: canonical name -> (display label, class); labels with ``{k}`` take the method's number of demonstrations.
METHODS: dict[str, tuple[str, type[Method]]] = {
    "zero-shot": ("zero-shot", ZeroShot),
    "few-shot": ("{k}-shot", FewShot),
    "bm25": ("BM25 {k}-shot", BM25FewShot),
    "static-tv": ("static TV", StaticTaskVector),
    "elicit": ("ELICIT", ELICIT),
    "i2cl": ("I2CL", I2CL),
    "lora": ("LoRA", LoRA),
    "atv": ("ATV", ATV),
    "static-vectors": ("static vectors", StaticVectors),
}
#: display label of ATV with a light generator (LoRA on the small model, paper §4.5)
ATV_LIGHT_LABEL = "ATV-Light"


def check_method_name(name: object) -> str:
    """`name` if it is a canonical method name, else ValueError naming the accepted ones."""
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"unknown method name {name!r}; accepted names: {', '.join(METHODS)}")
    return name


def method_class(name: str) -> type[Method]:
    """The class of the method called `name` (a key of :data:`METHODS`)."""
    return METHODS[check_method_name(name)][1]


def display_label(method: Method | str) -> str:
    """Display label of a method instance or of a canonical method name (see the module docstring).

    An instance of a user-defined method whose ``name`` is not in :data:`METHODS` is labelled by its ``name``.
    """
    if isinstance(method, Method):
        name = method.name
        if name not in METHODS:
            return str(name)
        if isinstance(method, ATV) and method.generator.describe().get("lora"):
            return ATV_LIGHT_LABEL
        k = getattr(method, "k", None)
    else:
        name, k = check_method_name(method), None
    return METHODS[name][0].format(k="k" if k is None else k)
