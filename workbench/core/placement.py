"""Where a large model's weights live: one device, a ``device_map`` over several, or 8-/4-bit quantized on a GPU.

Module contents:

- :data:`QUANTIZATIONS`, :func:`check_placement`, :func:`parse_device_map` (the CLI's ``--device-map``): the
  options of :func:`workbench.load_model` checked before anything loads (an unknown quantization, ``remote=True``
  with a ``device_map``, a quantized request without CUDA or without bitsandbytes: a ValueError naming the value and
  what would be accepted).
- :func:`placement_kwargs`: the ``from_pretrained`` keyword arguments for them (``device_map``, bitsandbytes through
  transformers' ``BitsAndBytesConfig`` as ``quantization_config``).
- :func:`execution_device`, :func:`block_devices`, :func:`to_block`: the device each decoder block computes on, and a
  tensor moved to the device (and dtype) of the hidden state it is added to (how an injection works when blocks
  live on different devices).
- :func:`offloaded_blocks`, :func:`onloaded`: blocks a ``device_map`` offloaded (cpu/disk), and offloaded weights
  brought in to be read (the fingerprint).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from typing import TYPE_CHECKING, Any, Mapping

import torch

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

#: accepted values of ``quantization`` (None: the weights as stored, in ``dtype``).
QUANTIZATIONS = ("8bit", "4bit")
#: the strings accelerate accepts as a ``device_map``.
DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device(value: Any, key: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, str, torch.device)):
        raise ValueError(f"device_map[{key!r}] = {value!r} is not a device: use an int (GPU index), 'cpu', "
                         "'cuda:N', 'mps', 'disk' or a torch.device")
    if isinstance(value, str) and value != "disk":
        try:
            torch.device(value)
        except RuntimeError as err:
            raise ValueError(f"device_map[{key!r}] = {value!r} is not a device: {err}") from err


def check_device_map(device_map: Any) -> str | dict | None:
    """`device_map` if it is None, one of :data:`DEVICE_MAP_NAMES` or a ``{module name: device}`` dict."""
    if device_map is None:
        return None
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise ValueError(f"device_map {device_map!r} is not accepted; use one of {DEVICE_MAP_NAMES} or a dict "
                             "{module name: device}")
        return device_map
    if not isinstance(device_map, Mapping) or not device_map:
        raise ValueError(f"device_map must be one of {DEVICE_MAP_NAMES} or a non-empty dict {{module name: device}}, "
                         f"got {device_map!r}")
    for key, value in device_map.items():
        if not isinstance(key, str):
            raise ValueError(f"device_map keys must be module names (str), got {key!r}")
        _check_device(value, key)
    return dict(device_map)


def parse_device_map(text: str | None) -> str | dict | None:
    """A ``--device-map`` value: one of :data:`DEVICE_MAP_NAMES` or a JSON object ``{"module": device}``."""
    if text is None or text in DEVICE_MAP_NAMES:
        return text
    import json

    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"--device-map {text!r} is neither one of {DEVICE_MAP_NAMES} nor a JSON object "
                         '{"module name": device}') from None
    return check_device_map(value)


def check_quantization(quantization: str | None) -> str | None:
    """`quantization` if it is None or one of :data:`QUANTIZATIONS`, else a ValueError naming the accepted values."""
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}; use one of {QUANTIZATIONS} or None")
    return quantization


def check_placement(
    remote: bool = False,
    device: Any = None,
    device_map: Any = None,
    quantization: str | None = None,
) -> tuple[str | dict | None, str | None]:
    """(device_map, quantization) checked together, before any weight is read; ValueError naming the bad value."""
    if not isinstance(remote, bool):
        raise ValueError(f"remote must be True or False, got {remote!r}")
    quantization = check_quantization(quantization)
    device_map = check_device_map(device_map)
    if remote and device_map is not None:
        raise ValueError(f"remote=True runs the model on NDIF's servers, which place it themselves: drop "
                         f"device_map={device_map!r}")
    if remote and quantization is not None:
        raise ValueError(f"remote=True runs NDIF's copy of the model as it is hosted: drop "
                         f"quantization={quantization!r}")
    if remote and device is not None:
        raise ValueError(f"remote=True runs the model on NDIF's servers: drop device={device!r}")
    if device is not None and device_map is not None:
        raise ValueError(f"give either device={device!r} or device_map={device_map!r}, not both")
    if quantization is not None:
        if not torch.cuda.is_available():
            raise ValueError(f"quantization={quantization!r} needs a CUDA GPU (bitsandbytes), and torch sees none "
                             f"(torch {torch.__version__}); load without quantization, or on a GPU machine")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError(f"quantization={quantization!r} needs the bitsandbytes package: pip install bitsandbytes")
    return device_map, quantization


def placement_kwargs(device_map: str | dict | None, quantization: str | None, dtype: torch.dtype) -> dict:
    """``from_pretrained`` keyword arguments for a checked (device_map, quantization); {} for neither.

    A quantized model without a ``device_map`` goes whole onto the current GPU (``device_map={"": 0}``); its
    non-quantized parts and its computations are in `dtype`."""
    kwargs: dict[str, Any] = {}
    if quantization is not None:
        from transformers import BitsAndBytesConfig

        if quantization == "8bit":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype,
                                                               bnb_4bit_quant_type="nf4")
        device_map = {"": torch.cuda.current_device()} if device_map is None else device_map
    if device_map is not None:
        kwargs["device_map"] = device_map
        if isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
            kwargs["offload_folder"] = tempfile.mkdtemp(prefix="atv-offload-")
    return kwargs


def execution_device(module: torch.nn.Module, default: torch.device | None = None) -> torch.device:
    """Where `module` computes: its accelerate hook's execution device when a ``device_map`` offloaded it (its
    parameters then sit on the meta device), else its first parameter's device (`default` without parameters)."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    param = next(module.parameters(), None)
    return param.device if param is not None else (default or torch.device("cpu"))


def block_devices(lm: LanguageModel) -> list[torch.device]:
    """The device each decoder block computes on (all ``lm.device`` unless accelerate placed the model: a
    ``device_map`` with more than one device)."""
    if not getattr(lm.hf, "hf_device_map", None):
        return [lm.device] * lm.num_layers
    return [execution_device(block, lm.device) for block in lm.layers]


def offloaded_blocks(lm: LanguageModel) -> list[int]:
    """Decoder blocks a ``device_map`` offloaded (their weights on the meta device, brought in per forward)."""
    return [i for i, block in enumerate(lm.layers) if any(p.device.type == "meta" for p in block.parameters())]


@contextlib.contextmanager
def onloaded(modules: list[torch.nn.Module]) -> Any:
    """Offloaded (``device_map`` with "cpu"/"disk" next to GPUs) modules' real weights, for reading them."""
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for module in modules:
            for sub in module.modules():
                stack.enter_context(align_module_device(sub))
        yield


def to_block(tensor: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """`tensor` on the device and in the dtype of `hidden` (the block output it is added to); a no-op when both
    already match, so the single-device path is unchanged."""
    if tensor.device == hidden.device and tensor.dtype == hidden.dtype:
        return tensor
    return tensor.to(device=hidden.device, dtype=hidden.dtype)
