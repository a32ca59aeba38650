"""NDIF: running the frozen large model on the National Deep Inference Fabric through nnsight's remote backend.

Only the model's forward passes go to NDIF; everything else (tokenizing, ATV's generator, scoring) stays here. What
works remotely: next-token logits with no intervention or an additive :class:`~workbench.core.interventions.Injection`
(zero-shot, static TV, ELICIT and ATV evaluation: the generator runs locally and its vectors go in the request) and
:func:`~workbench.core.inference.last_token_states` (fitting static TV and ELICIT). What cannot
(:data:`LOCAL_ONLY`): anything that needs gradients through the model or its weights (training the generator,
LoRA, I2CL's fit), the shared-prefix KV cache (keys and values would travel both ways), generation.

Module contents:

- :func:`api_key`, :func:`preflight`, :func:`hosted_repos`, :func:`check_hosted`: one clear error before a long
  job starts (no key, NDIF unreachable, a model NDIF does not host), naming what is missing and how to set it.
- :class:`RemoteTarget`: what a remote :class:`~workbench.core.models.LanguageModel` carries (the nnsight model, its
  key, the backend to send requests through); :class:`RequestRecorder`, a backend that builds and serializes each
  request with nnsight's own schema (``RequestModel``) and keeps it instead of sending it (a dry run; optionally it
  then runs the request here, as an NDIF server would).
- :func:`require_local`: the error an operation that cannot run remotely raises, naming it.
- :func:`remote_logits`, :func:`remote_states`: the trace bodies sent to NDIF (only envoys and tensors travel).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

from workbench.core.interventions import Injection, resolve_layers

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

#: Operations that need the model's weights here (error text of :func:`require_local`).
LOCAL_ONLY = ("training the ATV generator through the model", "LoRA", "I2CL's fit", "the shared-prefix KV cache",
              "generation", "interventions other than an additive Injection")
KEY_HELP = ("set the environment variable NDIF_API_KEY=<key>, pass api_key=... (CLI: --ndif-api-key), or store it "
            "once with `python -c \"import nnsight; nnsight.CONFIG.set_default_api_key('<key>')\"`; "
            "a key is free at https://login.ndif.us")


class RemoteUnavailable(ConnectionError):
    """NDIF cannot run this job: no API key, the service is unreachable, or it does not host the model (an OSError,
    so the CLI prints it as ``error: ...``)."""


class RemoteUnsupported(ValueError):
    """An operation that needs the model's weights on this machine was asked of a remote model."""


def api_key(explicit: str | None = None) -> str | None:
    """The NDIF API key: `explicit`, else ``$NDIF_API_KEY``, else nnsight's config (``CONFIG.API.APIKEY``)."""
    from nnsight import CONFIG

    return explicit or os.environ.get("NDIF_API_KEY") or CONFIG.API.APIKEY or None


def ndif_host() -> str:
    """NDIF's address (nnsight's ``CONFIG.API.HOST``, ``$NDIF_HOST`` overrides it)."""
    from nnsight import CONFIG

    return os.environ.get("NDIF_HOST") or CONFIG.API.HOST


def hosted_repos(status: dict) -> dict[str, str]:
    """``{repo id: state}`` of the models a ``/status`` answer lists as deployed (level HOT or WARM)."""
    out = {}
    for name, value in (status.get("deployments") or {}).items():
        if value.get("deployment_level") in ("HOT", "WARM"):
            out[value.get("repo_id", name)] = value.get("application_state", "UNKNOWN")
    return out


def fetch_status(host: str, timeout: float) -> dict:
    """NDIF's ``/status`` answer; :class:`RemoteUnavailable` naming the host when it cannot be reached."""
    import httpx

    try:
        response = httpx.get(f"{host}/status", timeout=timeout)
        response.raise_for_status()
        return response.json()
    except (httpx.HTTPError, ValueError) as err:
        raise RemoteUnavailable(f"NDIF at {host} is unreachable ({type(err).__name__}: {err}). Are you offline? "
                                "remote=True needs network access to NDIF (set NDIF_HOST for another server); "
                                "without it, load the model locally (remote=False)") from err


def preflight(model: str, key: str | None = None, timeout: float = 5.0) -> str:
    """The API key to use for `model` on NDIF, after checking, within `timeout` seconds, that the service answers
    and hosts `model`; :class:`RemoteUnavailable` naming what is missing and how to set it."""
    found = api_key(key)
    if not found:
        raise RemoteUnavailable(f"remote=True for {model!r} needs an NDIF API key and none is set: {KEY_HELP}")
    host = ndif_host()
    check_hosted(model, hosted_repos(fetch_status(host, timeout)), host)
    return found


def check_hosted(model: str, hosted: dict[str, str], host: str) -> None:
    """:class:`RemoteUnavailable` naming `model` and the hosted ones unless `model` is among `hosted`."""
    if model not in hosted:
        listed = ", ".join(sorted(hosted)) or "none right now"
        raise RemoteUnavailable(f"NDIF ({host}) does not host {model!r}; it hosts: {listed}. Use one of those "
                                "hub ids (exact spelling), or load the model locally")


@dataclass
class RemoteTarget:
    """A model on NDIF: the nnsight model (weights on the meta device here), its remote key, and how requests go.

    ``backend_factory(target)`` makes the backend of one trace; None: nnsight's ``RemoteBackend`` to ``host``."""

    envoy: Any
    model_key: str
    api_key: str = ""
    host: str = ""
    backend_factory: Callable[[RemoteTarget], Any] | None = None

    def request(self) -> Any:
        """The routing envelope (nnsight's ``RequestModel``) every request to this model carries."""
        from nnsight import CONFIG
        from nnsight.schema.request import RequestModel

        return RequestModel(model_key=self.model_key, compress=CONFIG.API.COMPRESS,
                            env=self.envoy._remoteable_get_env())

    def backend(self) -> Any:
        if self.backend_factory is not None:
            return self.backend_factory(self)
        from nnsight.intervention.backends.remote import RemoteBackend

        return RemoteBackend(self.model_key, host=self.host or None, api_key=self.api_key,
                             env=self.envoy._remoteable_get_env())

    def fingerprint(self) -> str:
        """What identifies the model without its weights: its remote key and config."""
        config = self.envoy._module.config.to_json_string(use_diff=False)
        return "remote:" + hashlib.sha256((self.model_key + config).encode()).hexdigest()[:16]

    def describe(self) -> dict:
        return {"model_key": self.model_key, "host": self.host}


@dataclass
class RequestRecorder:
    """A backend that builds each request exactly as nnsight's ``RemoteBackend`` would (``RequestModel`` envelope,
    ``RequestModel.serialize`` payload) and keeps it in ``sent`` instead of posting it. ``execute=True`` then runs
    the payload here as a server would (nnsight's ``LocalSimulationBackend``: deserialized with local modules
    hidden, run against the local weights), so the saved values come back."""

    target: RemoteTarget
    execute: bool = False
    sent: list[tuple[Any, bytes]] = field(default_factory=list)

    def __call__(self, tracer: Any) -> None:
        from nnsight.ndif import pull_env
        from nnsight.schema.request import RequestModel

        request = self.target.request()
        pull_env()
        self.sent.append((request, RequestModel.serialize(tracer, request.compress)))
        if self.execute:
            from nnsight.intervention.backends.local import LocalSimulationBackend

            LocalSimulationBackend(self.target.envoy)(tracer)


def require_local(lm: LanguageModel, operation: str) -> None:
    """:class:`RemoteUnsupported` naming `operation` when `lm` runs on NDIF."""
    if getattr(lm, "remote", None) is not None:
        raise RemoteUnsupported(
            f"{operation} cannot run on a remote (NDIF) model ({lm.name}): it needs the weights on this machine. "
            "Remotely the workbench runs next-token logits with no intervention or an additive Injection "
            "(zero-shot, static TV, ELICIT and ATV evaluation) and last_token_states (fitting static TV / ELICIT); "
            f"not {', '.join(LOCAL_ONLY)}. Load the model locally (remote=False) for this")


def _edits(lm: LanguageModel, injection: Any, rows: slice, attention_mask: torch.Tensor
           ) -> list[tuple[int, torch.Tensor]]:
    """(layer, [b or 1, T, d] float32 addition) per edited block of a plain additive injection, computed here."""
    if injection is None:
        return []
    if not isinstance(injection, Injection):
        require_local(lm, f"the intervention {type(injection).__name__}")
    deltas = injection.deltas(rows, torch.float32, torch.device("cpu"))
    mask = injection.position_mask(attention_mask.cpu(), torch.float32)
    out = []
    for layer in resolve_layers(injection.layers, lm.num_layers):
        delta = deltas[..., layer, :]
        out.append((layer, mask * (delta[:, None, :] if delta.dim() == 2 else delta)))
    return out


def remote_logits(lm: LanguageModel, enc: dict[str, torch.Tensor], injection: Any, rows: slice) -> torch.Tensor:
    """Last-token logits ``[b, V]`` of one batch on NDIF, the injection's additions sent with the request."""
    if injection is not None and injection.requires_grad:
        require_local(lm, "a forward pass with gradients (training)")
    edits = _edits(lm, injection, rows, enc["attention_mask"])
    model, blocks = lm.nn, lm.nn_layers()
    with model.trace(**enc, logits_to_keep=torch.tensor([enc["input_ids"].shape[1] - 1]),
                     backend=lm.remote.backend()):
        for layer, delta in edits:
            out = blocks[layer].output  # NDIF's copy may run in another dtype: the addition follows it
            blocks[layer].output = out + delta.to(device=out.device, dtype=out.dtype)
        logits = model.output.logits[:, -1].save()
    return logits.float().cpu()


def remote_states(lm: LanguageModel, enc: dict[str, torch.Tensor]) -> torch.Tensor:
    """Decoder-block outputs at the last prompt token ``[b, L, d]`` of one batch on NDIF."""
    model, blocks = lm.nn, lm.nn_layers()
    with model.trace(**enc, logits_to_keep=torch.tensor([enc["input_ids"].shape[1] - 1]),
                     backend=lm.remote.backend()):
        states = torch.stack([blocks[i].output[:, -1] for i in range(len(blocks))], dim=1).save()  # one saved value
    return states.float().cpu()


def model_key(repo_id: str, revision: str | None = None) -> str:
    """nnsight's remote key of a text-generation model (the key ``TransformersModel.to_model_key`` mints, without
    asking the hub to canonicalize `repo_id`)."""
    from nnsight.modeling.transformers import TransformersModel
    from nnsight.util import to_import_path

    return f"{to_import_path(TransformersModel)}:" + json.dumps(
        {"repo_id": repo_id, "revision": revision, "task": "text-generation"})
