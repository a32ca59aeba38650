"""NDIF remote models, up to the network call: every remote operation builds and serializes the request nnsight's
own schema (``RequestModel``) would post; the payload is then run here as an NDIF server runs it (nnsight's
``LocalSimulationBackend``: deserialized with this project's modules hidden), so its results are compared with the
local model's. Operations that cannot run remotely, and the preflight (no key, offline, model not hosted), fail
with errors naming what is missing."""

from __future__ import annotations

import pytest
import torch
from nnsight.schema.request import RequestModel

import workbench as wb
from workbench.atv.generator import ATVGenerator
from workbench.core import remote
from workbench.core.encoders import load_encoder
from workbench.core.inference import cached_next_token_logits, generate, last_token_states, next_token_logits
from workbench.core.interventions import ContextInjection, Injection
from workbench.core.remote import RemoteUnavailable, RemoteUnsupported
from workbench.core.testing import as_remote, tiny_model
from workbench.eval.evaluate import evaluate
from workbench.methods.atv import ATV
from workbench.methods.elicit import ELICIT
from workbench.methods.i2cl import I2CL
from workbench.methods.lora import LoRA
from workbench.methods.prompting import ZeroShot
from workbench.methods.static import StaticTaskVector
from workbench.tasks.registry import Item, Task

WORDS = ["good movie", "bad film", "great plot", "slow story", "nice cast", "dull scene"]
PROMPTS = ["good movie", "a bad film is slow", "nice cast"]


def toy_task(name: str = "toy_remote") -> Task:
    items = [Item(f"{WORDS[i % len(WORDS)]} {i}", ("positive", "negative")[i % 2]) for i in range(12)]
    return Task(name=name, category="NLU", domain="NLU", templates=["Review: {input}", "{input} ?", "Text: {input}"],
                labels=("positive", "negative"), in_domain=True, train=items, valid=items[:4], test=items[8:])


@pytest.fixture(scope="module")
def models():
    task = toy_task()
    texts = [t for it in task.train for t in it] + task.templates + PROMPTS
    lm = tiny_model("llama", texts=texts)
    rlm, recorder = as_remote(lm)
    return lm, rlm, recorder, task


def check_requests(rlm, recorder, n: int) -> list:
    """The last `n` recorded requests: nnsight's envelope naming the model, and a payload a server can rebuild."""
    sent = recorder.sent[-n:]
    assert len(recorder.sent) >= n
    tracers = []
    for request, blob in sent:
        envelope = RequestModel.model_validate_json(request.metadata())
        assert envelope.model_key == rlm.remote.model_key and rlm.name in envelope.model_key
        assert isinstance(blob, bytes) and blob
        tracers.append(RequestModel.deserialize(blob, rlm.nn._remoteable_persistent_objects(),
                                                compress=request.compress))
    return tracers


def test_zero_shot_logits_go_as_requests_and_match_local(models):
    lm, rlm, recorder, _ = models
    before = len(recorder.sent)
    got = next_token_logits(rlm, PROMPTS, batch_size=2)
    assert len(recorder.sent) - before == 2  # one request per batch
    check_requests(rlm, recorder, 2)
    torch.testing.assert_close(got, next_token_logits(lm, PROMPTS, batch_size=2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("batched", [False, True], ids=["static [L,d]", "per-prompt [B,L,d]"])
def test_injection_vectors_travel_in_the_request(models, batched):
    lm, rlm, recorder, _ = models
    torch.manual_seed(0)
    shape = (len(PROMPTS), lm.num_layers, lm.hidden_size) if batched else (lm.num_layers, lm.hidden_size)
    inj = Injection(torch.randn(shape), scale=0.7, layers=[1, 3])
    got = next_token_logits(rlm, PROMPTS, injection=inj)
    (tracer,) = check_requests(rlm, recorder, 1)
    edits = tracer.info.frame.f_locals["edits"]
    assert [layer for layer, _ in edits] == [1, 3]
    v = inj.vectors if batched else inj.vectors.expand(len(PROMPTS), -1, -1)
    torch.testing.assert_close(edits[0][1][:, -1], 0.7 * v[:, 1])  # the vectors are in the payload
    want = next_token_logits(lm, PROMPTS, injection=inj)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert not torch.allclose(want, next_token_logits(lm, PROMPTS), atol=1e-3)  # the injection did something


def test_last_token_states_request_matches_local(models):
    lm, rlm, recorder, _ = models
    got = last_token_states(rlm, PROMPTS, batch_size=8)
    check_requests(rlm, recorder, 1)
    assert got.shape == (len(PROMPTS), lm.num_layers, lm.hidden_size)
    torch.testing.assert_close(got, last_token_states(lm, PROMPTS), rtol=0, atol=1e-5)


def test_evaluation_of_zero_shot_static_tv_elicit_and_atv_runs_remotely(models):
    """Fitting static TV and ELICIT (last_token_states, ELICIT's layer sweep) and evaluating them, zero-shot and ATV
    (its generator runs here) on the remote model give the local model's rows; the shared-prefix cache falls back to
    whole prompts."""
    lm, rlm, recorder, task = models
    kw = dict(n_test=2, templates=[0], prefixes="A:", progress=False)
    gens = [ATVGenerator(load_encoder("scratch:1x16", tokenizer=lm.tokenizer, seed=0), m) for m in (lm, rlm)]
    with torch.no_grad():
        gens[0].projection.bias.normal_(0, 1.0)  # a generator whose vectors change the answer distribution
    gens[1].load_state_dict(gens[0].state_dict())  # the same generator, made for the remote model
    for local_method, remote_method in [
        (ZeroShot(), ZeroShot()),
        (StaticTaskVector(k=2, n_prompts=2, scale=0.5).fit(lm, [task]),
         StaticTaskVector(k=2, n_prompts=2, scale=0.5).fit(rlm, [task])),
        (ELICIT(k=2, n_prompts=2, n_valid=2, layer_stride=2).fit(lm, [task]),
         ELICIT(k=2, n_prompts=2, n_valid=2, layer_stride=2).fit(rlm, [task])),
        (ATV(gens[0], scale=0.5), ATV(gens[1], scale=0.5)),
    ]:
        before = len(recorder.sent)
        want = evaluate(lm, local_method, [task], cache=False, **kw)
        got = evaluate(rlm, remote_method, [task], **kw)
        assert len(recorder.sent) > before
        assert got["prediction"].tolist() == want["prediction"].tolist(), local_method.name
        assert got["label_prediction"].tolist() == want["label_prediction"].tolist()


def test_cached_logits_fall_back_to_whole_prompts(models):
    lm, rlm, recorder, _ = models
    before = len(recorder.sent)
    got = cached_next_token_logits(rlm, PROMPTS)
    assert len(recorder.sent) > before
    torch.testing.assert_close(got, next_token_logits(lm, PROMPTS), rtol=0, atol=1e-5)


def test_operations_that_need_local_weights_name_themselves(models):
    lm, rlm, recorder, task = models
    before = len(recorder.sent)
    with pytest.raises(RemoteUnsupported, match="generation"):
        generate(rlm, PROMPTS)
    with pytest.raises(RemoteUnsupported, match="LoRA"):
        LoRA(epochs=1, n_train=2).fit(rlm, [task])
    with pytest.raises(RemoteUnsupported, match="I2CL"):
        I2CL().fit(rlm, [task])
    gen = ATVGenerator(load_encoder("scratch:1x8", tokenizer=lm.tokenizer, seed=0), rlm)
    with pytest.raises(RemoteUnsupported, match="training the ATV generator"):
        wb.train_atv(rlm, gen, [task], progress=False)
    cv = ContextInjection(torch.zeros(lm.num_layers, 2, lm.hidden_size), torch.ones(lm.num_layers, 2, 2))
    with pytest.raises(RemoteUnsupported, match="ContextInjection"):
        next_token_logits(rlm, PROMPTS, injection=cv)
    grad = Injection(torch.zeros(lm.num_layers, lm.hidden_size, requires_grad=True))
    with pytest.raises(RemoteUnsupported, match="gradients"):
        next_token_logits(rlm, PROMPTS, injection=grad)
    assert len(recorder.sent) == before  # refused before any request was built


def test_preflight_without_a_key_names_how_to_set_one(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    with pytest.raises(RemoteUnavailable, match="NDIF_API_KEY"):
        remote.preflight("meta-llama/Llama-3.1-70B")
    with pytest.raises(RemoteUnavailable, match="NDIF_API_KEY"):  # before any download
        wb.load_model("meta-llama/Llama-3.1-70B", remote=True)


def test_preflight_offline_names_the_host(monkeypatch):
    monkeypatch.setenv("NDIF_HOST", "http://ndif.invalid")  # .invalid never resolves
    with pytest.raises(RemoteUnavailable, match=r"ndif\.invalid is unreachable"):
        remote.preflight("meta-llama/Llama-3.1-70B", "some-key", timeout=2.0)


def test_model_not_hosted_lists_the_hosted_ones():
    status = {"deployments": {
        "a": {"repo_id": "meta-llama/Llama-3.1-70B", "deployment_level": "HOT", "application_state": "RUNNING"},
        "b": {"repo_id": "openai-community/gpt2", "deployment_level": "COLD"},
    }}
    hosted = remote.hosted_repos(status)
    assert hosted == {"meta-llama/Llama-3.1-70B": "RUNNING"}
    remote.check_hosted("meta-llama/Llama-3.1-70B", hosted, "h")
    with pytest.raises(RemoteUnavailable, match=r"does not host 'openai-community/gpt2'.*Llama-3\.1-70B"):
        remote.check_hosted("openai-community/gpt2", hosted, "h")


def test_api_key_precedence(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", "from-config")
    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    assert remote.api_key() == "from-config"
    monkeypatch.setenv("NDIF_API_KEY", "from-env")
    assert remote.api_key() == "from-env"
    assert remote.api_key("given") == "given"


@pytest.mark.parametrize("bad", [{"device_map": "auto"}, {"quantization": "8bit"}, {"device": "cpu"}])
def test_remote_with_local_placement_is_refused_before_loading(bad):
    with pytest.raises(ValueError, match="remote=True") as err:
        wb.load_model("meta-llama/Llama-3.1-70B", remote=True, **bad)
    assert repr(next(iter(bad.values()))) in str(err.value)


@pytest.mark.parametrize("argv, message", [
    (["--remote", "--device-map", "auto"], "remote=True runs the model on NDIF's servers, which place it themselves"),
    (["--quantization", "3bit"], "unknown quantization '3bit'; use one of ('8bit', '4bit')"),
    (["--device-map", "{not json"], "--device-map '{not json' is neither one of"),
    (["--remote", "--model", "meta-llama/Llama-3.1-70B"], "NDIF_API_KEY"),
])
def test_eval_cli_refuses_before_loading(argv, message, capsys, monkeypatch):
    from nnsight import CONFIG

    from workbench import cli

    monkeypatch.delenv("NDIF_API_KEY", raising=False)
    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    monkeypatch.setattr("workbench.cli.eval.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err
