"""The ATV generator: a small model reads the query, one linear map expands its state to ``[L, d]`` vectors.

``ATVGenerator(encoder, lm)`` is the paper's ATV (small model fully trainable + ``nn.Linear(d_s, L*d)`` with bias);
the source may be an :class:`~workbench.core.encoders.Encoder` or its name (``"minilm-l6"``, ``"gpt2"``,
``"scratch:4x256"``, ``"self:12"``: the frozen large model's own state after block 12, no second model; see
:func:`~workbench.core.encoders.load_encoder`).
``ATVGenerator.light(encoder, lm, lora_r=8, bottleneck=64)`` is ATV-Light (paper §4.5: LoRA on the small model and
a bottleneck ``d_s -> r -> L*d``). ``save(dir)`` / ``ATVGenerator.load(dir, lm)`` round-trip a checkpoint
(safetensors + ``generator.json``), written atomically.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import safetensors.torch
import torch
from torch import nn

from workbench.atv.examples import GENERATOR_INPUTS, generator_text
from workbench.core.architectures import ARCHITECTURES, lora_parameter_count
from workbench.core.encoders import Encoder, load_encoder
from workbench.core.files import (
    FileFormatError,
    atomic_dir,
    atomic_write_text,
    package_versions,
    read_json,
    recover_dir,
)
from workbench.core.fingerprints import check_fingerprint, tensors_fingerprint
from workbench.core.models import model_name
from workbench.core.tensorfiles import load_weights

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

WEIGHTS, META = "generator.safetensors", "generator.json"
#: fit_input_norm: a feature's scale is at least this fraction of the median feature std.
INPUT_SCALE_FLOOR = 0.01
#: What training records in ``gen.meta`` (saved in ``generator.json``, restored by ``load``): the injection settings,
#: the names of the tasks it was trained on and the whole TrainConfig.
TRAINING_META = ("scale", "layers", "positions", "generator_input", "tasks", "train_config", "kept_epoch")
#: Keys of generator.json that loading needs (read_meta raises FileFormatError naming the first missing one).
META_KEYS = ("encoder", "pooling", "lm", "num_layers", "hidden_size")
#: What to do about a damaged generator folder.
REBUILD = "the generator folder is damaged or was edited: save the generator again (ATVGenerator.save) or retrain it"


def is_checkpoint(directory: Path) -> bool:
    """Whether `directory` is a folder holding a generator checkpoint (and nothing the workbench would not have
    written there)."""
    directory = Path(directory)
    if not directory.is_dir() or directory.is_symlink():
        return False
    names = {p.name for p in directory.iterdir()}
    return META in names and names <= {META, WEIGHTS}


class CheckpointMismatch(ValueError):
    """A generator checkpoint was made for another large model."""


class ATVGenerator(nn.Module):
    """Small model + expansion ``d_s -> L*d`` (or ``d_s -> bottleneck -> L*d``); ``.vectors(queries) -> [B, L, d]``."""

    def __init__(self, encoder: Encoder | str, lm: LanguageModel, bottleneck: int | None = None,
                 input_norm: bool = False):
        super().__init__()
        if isinstance(encoder, str):
            encoder = load_encoder(encoder, lm=lm)
        if not isinstance(encoder, Encoder):
            raise ValueError(f"encoder must be a wb.Encoder (wb.load_encoder(...)) or a source name (minilm-l6, "
                             f"scratch:LxW, self:K, a HF id or folder), got {type(encoder).__name__}")
        if bottleneck is not None and (isinstance(bottleneck, bool) or not isinstance(bottleneck, int)
                                       or bottleneck < 1):
            raise ValueError(f"bottleneck must be a positive int or None, got {bottleneck!r}")
        self.encoder = encoder
        self.num_layers, self.hidden_size, self.lm_name = lm.num_layers, lm.hidden_size, lm.name
        self.lm_fingerprint: str | None = getattr(lm, "fingerprint", None)
        self.bottleneck = bottleneck
        self.lora: dict | None = None
        out = lm.num_layers * lm.hidden_size
        dim = encoder.dim
        self.projection = (nn.Linear(dim, out) if bottleneck is None
                           else nn.Sequential(nn.Linear(dim, bottleneck), nn.Linear(bottleneck, out)))
        self.projection.to(device=encoder.device, dtype=encoder.dtype)
        if not isinstance(input_norm, bool):
            raise ValueError(f"input_norm must be True or False, got {input_norm!r}")
        self.input_norm = input_norm
        if input_norm:  # standardise the small model's states before the projection (see fit_input_norm)
            self.register_buffer("input_mean", torch.zeros(dim, device=encoder.device))
            self.register_buffer("input_scale", torch.ones(dim, device=encoder.device))
        self.meta: dict[str, Any] = {}  # injection settings / train config recorded by training

    @classmethod
    def light(cls, encoder: Encoder, lm: LanguageModel, lora_r: int = 8, bottleneck: int = 64,
              lora_alpha: int = 16, lora_dropout: float = 0.05, input_norm: bool = False) -> ATVGenerator:
        """ATV-Light: peft LoRA (rank `lora_r`) on the small model's attention + a `bottleneck` projection."""
        gen = cls(encoder, lm, bottleneck=bottleneck, input_norm=input_norm)
        gen.add_lora(lora_r, lora_alpha, lora_dropout)
        return gen

    def add_lora(self, r: int, alpha: int, dropout: float) -> None:
        from peft import LoraConfig, get_peft_model

        if not hasattr(self.encoder, "body"):
            raise ValueError(f"ATV-Light puts LoRA on the small model; {self.encoder.name!r} is the frozen large "
                             "model itself (nothing to adapt): use ATVGenerator(source, lm, bottleneck=...) instead")
        model_type = getattr(self.encoder.body.config, "model_type", None)
        arch = ARCHITECTURES.get(model_type)
        if arch is None or not arch.encoder_lora_targets:
            known = sorted(t for t, a in ARCHITECTURES.items() if a.encoder_lora_targets)
            raise ValueError(f"no LoRA targets known for a {model_type!r} small model; known: {known} "
                             f"(workbench.core.architectures)")
        self.lora = {"r": r, "alpha": alpha, "dropout": dropout, "targets": list(arch.encoder_lora_targets)}
        cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=self.lora["targets"],
                         fan_in_fan_out=arch.fan_in_fan_out)
        self.encoder.body = get_peft_model(self.encoder.body, cfg)  # freezes everything but the adapters

    # ----------------------------------------------------------------------------------------- forward
    @property
    def generator_input(self) -> str:
        """What the generator reads, recorded by training: ``"prompt"`` (the templated prompt, the paper's; also
        the default of an untrained generator) or ``"official"`` (``"Q: {input} \\n A: "``)."""
        value = self.meta.get("generator_input", "prompt")
        if value not in GENERATOR_INPUTS:
            raise ValueError(f"generator_input {value!r} recorded in gen.meta is unknown; use one of "
                             f"{GENERATOR_INPUTS}")
        return value

    def input_texts(self, inputs: Sequence[str] | None, texts: Sequence[str]) -> list[str]:
        """The texts this generator reads for queries with these raw `inputs` and templated `texts` (template +
        "\\n" + prefix): `texts` themselves, or the official input built from `inputs` -- the same rule
        training used (:func:`workbench.atv.examples.generator_text`)."""
        if self.generator_input == "prompt":
            return list(texts)
        if inputs is None or len(inputs) != len(texts):
            raise ValueError(f"this generator reads {self.generator_input!r} input built from each query's raw "
                             f"input: give one input per text ({len(texts)} texts)")
        return [generator_text(inp, text, self.generator_input) for inp, text in zip(inputs, texts)]

    def forward(self, queries: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """``[B, L, d]`` vectors for query texts (or for precomputed small-model states ``[B, d_s]``)."""
        states = queries if isinstance(queries, torch.Tensor) else self.encoder.encode(list(queries))
        if self.input_norm:
            states = (states - self.input_mean.to(states.dtype)) / self.input_scale.to(states.dtype)
        return self.projection(states).view(-1, self.num_layers, self.hidden_size)

    @torch.no_grad()
    def zero_query_weights(self) -> None:
        """Zero the weight of the projection's last linear map (its bias and any bottleneck stay): the generator
        starts as one static vector (the bias) and becomes query-dependent only where the gradient asks for it,
        instead of starting from a random per-query edit the answer format first has to overcome."""
        last = self.projection if isinstance(self.projection, nn.Linear) else self.projection[-1]
        last.weight.zero_()

    @torch.no_grad()
    def fit_input_norm(self, texts: Sequence[str], batch_size: int = 32) -> None:
        """Set the standardisation of the small model's states (``input_norm=True``) to the per-feature mean and
        standard deviation over `texts` (the training queries), computed in eval mode; a scale is at least
        ``INPUT_SCALE_FLOOR`` x the median one, so a (near-)constant feature is not amplified.

        Why: a sentence encoder's pooled states share a large common component (MiniLM-L6, last token: the mean
        state's norm is about the size of a query's deviation from it). Un-centred, the projection's weight
        learns the answer format through that component -- ``W s̄`` acts as a second, d_s-times faster bias -- and
        the query-specific part ``W (s - s̄)`` stays ~0.1 % of the vector (``benchmarks/atv_learns.py``)."""
        if not self.input_norm:
            raise ValueError("this generator was built with input_norm=False; use ATVGenerator(..., input_norm=True)")
        if isinstance(texts, str) or len(texts) < 2:
            raise ValueError(f"fit_input_norm needs a list of at least 2 texts, got {texts!r:.80}")
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            states = torch.cat([self.encoder.encode(list(texts[i: i + batch_size])).float()
                                for i in range(0, len(texts), batch_size)])
        finally:
            self.encoder.train(was_training)
        std = states.std(0)
        self.input_mean.copy_(states.mean(0))
        # a (near-)constant feature must not be blown up: MiniLM-L6 has one with std ~1e-33 (median 0.14)
        self.input_scale.copy_(std.clamp(min=max(INPUT_SCALE_FLOOR * float(std.median()), 1e-8)))

    def vectors(self, queries: Sequence[str] | torch.Tensor) -> torch.Tensor:
        """Same as calling the module (gradients flow when enabled)."""
        return self(queries)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def parameter_report(self, lm: LanguageModel, lora_r: int = 8) -> dict[str, int]:
        """Trainable parameters of this generator, of full ATV with the same small model, and of LoRA (rank
        `lora_r` on the large model's query/value projections, counted analytically)."""
        full = sum(p.numel() for n, p in self.encoder.named_parameters() if "lora_" not in n)
        full += self.encoder.dim * self.num_layers * self.hidden_size + self.num_layers * self.hidden_size
        return {"this": self.trainable_parameters(), "ATV": full, f"LoRA r={lora_r}": lora_parameter_count(lm, lora_r)}

    # ----------------------------------------------------------------------------------------- save / load
    def fingerprint(self) -> str:
        """Fingerprint of every weight and buffer (its state dict, all values): ``save`` records it in
        ``generator.json``, ``load`` checks the weights file against it, an ATV run folder records it."""
        return tensors_fingerprint(self.state_dict().items())

    def describe(self) -> dict[str, Any]:
        """The architecture and the large model it is made for (name, L, d, ``lm_fingerprint``), plus ``meta``."""
        enc = self.encoder
        return {"encoder": enc.name, "pooling": enc.pooling, "encoder_max_length": enc.max_length,
                "encoder_dim": enc.dim, "bottleneck": self.bottleneck, "lora": self.lora, "input_norm": self.input_norm,
                "lm": self.lm_name, "lm_fingerprint": self.lm_fingerprint, "num_layers": self.num_layers,
                "hidden_size": self.hidden_size,
                "dtype": str(next(self.parameters()).dtype).replace("torch.", ""),
                "trainable_parameters": self.trainable_parameters(), **self.meta}

    def save(self, directory: str | os.PathLike, overwrite: bool = False, **extra: Any) -> Path:
        """Write weights + ``generator.json`` (everything needed to rebuild it, plus `extra`) atomically.

        An existing generator checkpoint at `directory` is replaced; any other non-empty folder or a file is refused
        (FileExistsError) unless ``overwrite=True``: save never deletes what it did not write.
        """
        target = Path(directory)
        with atomic_dir(target, owned=is_checkpoint, overwrite=overwrite, what="generator") as tmp:
            safetensors.torch.save_model(self, str(tmp / WEIGHTS))
            meta = {**self.describe(), **extra, "package_versions": package_versions(),
                    "fingerprint": self.fingerprint()}
            atomic_write_text(tmp / META, json.dumps(meta, indent=2, default=str))
        return target

    @staticmethod
    def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
        """The parsed ``generator.json`` of `directory` (FileFormatError naming it if damaged). A save of
        `directory` that a kill cut is undone first (:func:`workbench.core.files.recover_dir`)."""
        recover_dir(directory)
        path = Path(directory) / META
        if not path.is_file():
            raise FileNotFoundError(f"{directory} is not a generator checkpoint (no {META})")
        return read_json(path, META_KEYS, f"the generator.json that ATVGenerator.save writes ({REBUILD})")

    @classmethod
    def load(cls, directory: str | os.PathLike, lm: LanguageModel, encoder: Encoder | None = None,
             allow_mismatch: bool = False) -> ATVGenerator:
        """Rebuild a saved generator for `lm`; refuses a checkpoint made for another large model
        (:func:`check_compatible`; ``allow_mismatch=True`` accepts one of the same shape with other weights, with a
        warning) and a weights file whose fingerprint is not the one ``generator.json`` records (a swapped or edited
        ``generator.safetensors``; checkpoints saved before fingerprints were recorded are not checked)."""
        meta = cls.read_meta(directory)
        check_compatible(meta, lm, directory, allow_mismatch=allow_mismatch)
        try:
            if encoder is None:  # scratch:LxW takes the large model's tokenizer, self:K the large model itself
                encoder = load_encoder(meta["encoder"], pooling=meta["pooling"], lm=lm)
                encoder.max_length = int(meta.get("encoder_max_length", encoder.max_length))
            gen = cls(encoder, lm, bottleneck=meta.get("bottleneck"), input_norm=bool(meta.get("input_norm", False)))
            if meta.get("lora"):
                lora = meta["lora"]
                gen.add_lora(lora["r"], lora["alpha"], lora["dropout"])
        except (ValueError, TypeError, KeyError) as e:
            raise FileFormatError(f"{Path(directory) / META}: cannot rebuild the generator it describes ({e}); "
                                  f"{REBUILD}") from None
        load_weights(gen, Path(directory) / WEIGHTS, REBUILD)
        gen.meta = {k: meta[k] for k in TRAINING_META if k in meta}
        check_fingerprint(f"{Path(directory) / WEIGHTS}: the weights are not the ones {META} was saved with",
                          meta.get("fingerprint"), gen.fingerprint(),
                          "restore the original file, or save the generator again (ATVGenerator.save)")
        return gen


def check_compatible(meta: dict, lm: LanguageModel, where: Any = "checkpoint", allow_mismatch: bool = False) -> None:
    """CheckpointMismatch naming what differs between a checkpoint (or a generator's ``describe()``) and `lm`: the
    layers L and hidden size d, and the large model itself -- by fingerprint when both sides have one (the same
    model under another path or name is accepted), else by name (a local path compared resolved).

    ``allow_mismatch=True`` accepts a large model of the same L and d with other weights or another name (with a
    warning); a different L or d is always refused."""
    recorded, have = meta.get("lm_fingerprint"), getattr(lm, "fingerprint", None)
    if recorded and have:
        same = recorded == have
    else:
        same = meta.get("lm") == lm.name or model_name(str(meta.get("lm"))) == lm.name
    model = [] if same else [f"large model: checkpoint {meta.get('lm')!r}, model {lm.name!r}"
                             + (f" (fingerprints: checkpoint {recorded}, model {have})" if recorded and have else "")]
    shape = [f"{what}: checkpoint {meta.get(key)!r}, model {have!r}"
             for what, key, have in (("layers L", "num_layers", lm.num_layers),
                                     ("hidden size d", "hidden_size", lm.hidden_size)) if meta.get(key) != have]
    message = f"generator {where} was made for another large model; " + "; ".join(model + shape)
    if shape or (model and not allow_mismatch):
        hint = "" if shape else "; pass allow_mismatch=True (CLI: --allow-fingerprint-mismatch) to use it anyway"
        raise CheckpointMismatch(message + hint)
    if model:
        warnings.warn(message + " (used anyway: allow_mismatch=True)", stacklevel=2)

