"""Generator sources (issue 23 §1): ``self:K`` reads the frozen large model's clean state after block K, trains only
the projection, round-trips by name; bad sources fail clearly; the generator reads the same input at train and eval."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from workbench.atv.generator import WEIGHTS, ATVGenerator, CheckpointMismatch
from workbench.atv.training import TrainConfig, train_atv
from workbench.cli import main
from workbench.cli.preflight import check_encoder_name
from workbench.core.encoders import SelfEncoder, load_encoder
from workbench.core.inference import last_token_states
from workbench.core.testing import tiny_model
from workbench.methods.atv import ATV
from workbench.tasks.registry import Item, Task

WORDS = ["good fun film", "bad slow film", "great cast", "dull plot", "nice music", "awful ending"]
TEMPLATES = ["Review: {input}\nIs it positive or negative?", "{input}\nSentiment?", "Text: {input}"]
TEXTS = ["the movie was great", "a sad and slow film that is a sad film", "hello"]  # three lengths: padding


def toy_task(words: list[str] = WORDS, templates: list[str] = TEMPLATES) -> Task:
    """A two-label task over `words` (alternating labels) with `templates`; every split holds all items."""
    items = [Item(w, "positive" if i % 2 == 0 else "negative") for i, w in enumerate(words)]
    return Task(name="toy", category="NLU", domain="NLU", templates=templates, labels=("positive", "negative"),
                in_domain=True, train=items, valid=items[:2], test=items)


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + TEMPLATES + TEXTS)


def alone(lm, encoder: SelfEncoder, text: str) -> tuple:
    """hidden_states of `text` run alone (no padding) through the whole model."""
    return lm.hf(**encoder.tokenize([text]), output_hidden_states=True).hidden_states


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gpt_neox"])
def test_self_reads_the_clean_state_after_block_k(arch):
    lm = tiny_model(arch, texts=TEXTS)
    L = lm.num_layers
    for k in range(L):
        enc = load_encoder(f"self:{k}", lm=lm)
        batched = enc.encode(TEXTS)  # length buckets
        padded = enc(**enc.tokenize(TEXTS))  # one right-padded batch
        assert batched.shape == (len(TEXTS), lm.hidden_size) and batched.dtype == torch.float32
        torch.testing.assert_close(padded, batched)
        # the block outputs workbench.core.inference reads (left-padded): the numbering of injections
        torch.testing.assert_close(batched, last_token_states(lm, [lm.render(t) for t in TEXTS])[:, k])
        if k < L - 1:  # transformers' last hidden state is after the final norm
            want = torch.stack([alone(lm, enc, t)[k + 1][0, -1] for t in TEXTS])
            torch.testing.assert_close(batched, want)


def test_self_stops_after_block_k(lm):
    ran = []
    hooks = [block.register_forward_hook(lambda *a, i=i: ran.append(i)) for i, block in enumerate(lm.layers)]
    try:
        load_encoder("self:1", lm=lm).encode(TEXTS)
    finally:
        for h in hooks:
            h.remove()
    assert ran and set(ran) == {0, 1}


def test_gradients_reach_the_projection_never_the_large_model(lm):
    gen = ATVGenerator("self:2", lm)
    assert isinstance(gen.encoder, SelfEncoder) and gen.encoder.name == "self:2"
    assert set(gen.state_dict()) == {"projection.weight", "projection.bias"}
    L, d = lm.num_layers, lm.hidden_size
    assert gen.trainable_parameters() == d * L * d + L * d  # the projection alone
    gen(TEXTS).pow(2).sum().backward()
    assert gen.projection.weight.grad is not None and gen.projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in lm.hf.parameters())
    assert not gen.encoder.encode(TEXTS).requires_grad
    with pytest.raises(ValueError, match="frozen large model itself"):
        ATVGenerator.light("self:2", lm)


def test_save_load_round_trip_and_another_model(lm, tmp_path):
    torch.manual_seed(0)
    gen = ATVGenerator("self:1", lm, input_norm=True)
    gen.fit_input_norm(TEXTS)
    gen.save(tmp_path / "g")
    meta = json.loads((tmp_path / "g" / "generator.json").read_text())
    assert meta["encoder"] == "self:1" and meta["encoder_dim"] == lm.hidden_size
    assert set(safetensors.torch.load_file(tmp_path / "g" / WEIGHTS)) == {
        "projection.weight", "projection.bias", "input_mean", "input_scale"}  # nothing of the large model
    back = ATVGenerator.load(tmp_path / "g", lm)
    assert isinstance(back.encoder, SelfEncoder) and back.encoder.block == 1
    assert back.fingerprint() == gen.fingerprint() == meta["fingerprint"]
    torch.testing.assert_close(back.vectors(TEXTS), gen.vectors(TEXTS))
    other = tiny_model("llama", texts=WORDS + TEMPLATES + TEXTS, seed=1)  # same shape, other weights
    with pytest.raises(CheckpointMismatch, match="another large model"):
        ATVGenerator.load(tmp_path / "g", other)


def test_bad_sources_give_clear_errors(lm):
    with pytest.raises(ValueError, match=r"self:99.*4 decoder blocks.*K in \[0, 3\]"):
        load_encoder("self:99", lm=lm)
    with pytest.raises(ValueError, match=r"K in \[0, 3\]"):
        ATVGenerator("self:4", lm)
    for bad in ("self:x", "self:-1", "self", "self:"):
        with pytest.raises(ValueError, match="self:<K>"):
            load_encoder(bad, lm=lm)
        with pytest.raises(ValueError, match="--encoder.*self:<K>"):
            check_encoder_name(bad)
    with pytest.raises(ValueError, match="lm=lm"):
        load_encoder("self:1")
    with pytest.raises(ValueError, match="source name"):
        ATVGenerator(12, lm)
    assert check_encoder_name("self:99") == "self:99"  # the range is known once the model loads
    with pytest.raises(FileNotFoundError, match="self:<block>"):
        check_encoder_name("./no/such/folder")
    for bad in ("nonsense:3", "two words", "a/b/c"):  # neither a source form nor a hub id
        with pytest.raises(FileNotFoundError, match=f"{bad!r}.*hub id"):
            check_encoder_name(bad)
    assert check_encoder_name("sentence-transformers/all-MiniLM-L6-v2")  # a hub id: loaded when online


def test_cli_checks_self_k_syntax_before_and_range_right_after_loading(lm, tmp_path, capsys, monkeypatch):
    code = main(["train", "--quiet", "--encoder", "self:x", "--run-dir", str(tmp_path / "a")])
    assert code == 2 and "self:x" in capsys.readouterr().err and not (tmp_path / "a").exists()
    folder = tmp_path / "tiny"
    lm.hf.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    capsys.readouterr()
    monkeypatch.setattr("workbench.cli.train.train_atv", lambda *a, **k: pytest.fail("training started"))
    code = main(["train", "--quiet", "--model", str(folder), "--encoder", "self:7", "--tasks", "glue_sst2",
                 "--run-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err.rstrip("\n").split("\n")[-1]  # after transformers' loading bar
    assert code == 2 and err.startswith("error: ") and "self:7" in err and "[0, 3]" in err
    assert not (tmp_path / "b" / "config.json").exists()


def test_train_a_self_generator_one_epoch_on_the_fast_path(lm):
    torch.manual_seed(0)
    gen = ATVGenerator("self:1", lm)
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    llm = {k: v.clone() for k, v in lm.hf.state_dict().items()}
    df = train_atv(lm, gen, [toy_task()], TrainConfig(epochs=1, n_train=4, batch_size=2, scale=1.0, lr=1e-2,
                                                        valid_items=2), progress=False)
    assert len(df) == 1 and torch.isfinite(torch.tensor(df["train_loss"].tolist())).all()
    assert df.attrs["prefix_cache"]["stored"] > 0  # the fast path ran
    assert any(not torch.equal(before[k], v) for k, v in gen.state_dict().items())
    assert all(torch.equal(llm[k], v) for k, v in lm.hf.state_dict().items())
    assert gen.describe()["encoder"] == "self:1"


@pytest.mark.parametrize("generator_input", ["official", "prompt"])
def test_generator_reads_the_same_input_at_train_and_eval(lm, tmp_path, generator_input):
    task = toy_task()
    gen = ATVGenerator(load_encoder("scratch:1x32", lm=lm, seed=0), lm)
    seen: list[str] = []
    encode = gen.encoder.encode

    def spy(texts):
        seen.extend(texts)
        return encode(texts)

    gen.encoder.encode = spy
    train_atv(lm, gen, [task], TrainConfig(epochs=1, n_train=2, batch_size=2, valid_items=0,
                                           generator_input=generator_input), progress=False)
    trained = set(seen)
    official = {f"Q: {it.input} \n A: " for it in task.train}
    assert trained <= official if generator_input == "official" else not trained & official
    gen.save(tmp_path / "g")
    back = ATVGenerator.load(tmp_path / "g", lm)
    assert back.generator_input == generator_input
    seen.clear()
    back.encoder.encode = spy
    items = task.test[:2]
    texts = [t.format(input=it.input) + "\nA:" for t, it in zip(TEMPLATES, items)]
    method = ATV(back, scale=0.5)
    batch = method.prepare(lm, task, items, texts)
    want = [f"Q: {it.input} \n A: " for it in items] if generator_input == "official" else texts
    assert seen == want and batch.prompts == [lm.render(t) for t in texts]
    assert method.config()["generator_input_eval"] == generator_input


def test_a_self_generator_evaluates_with_its_cost_in_the_efficiency_table(lm):
    from workbench.eval.efficiency import efficiency_table
    from workbench.eval.evaluate import evaluate

    df = evaluate(lm, ATV(ATVGenerator("self:1", lm), scale=0.5), [toy_task()], n_test=2, templates=[0],
                  prefixes=["A:"], progress=False)
    assert len(df) == 2
    assert efficiency_table({"atv self:1": df}).loc["atv self:1", "Latency (s)"] > 0


def test_a_decoder_folder_is_a_source_read_at_its_last_real_token(lm, tmp_path, capsys):
    small = tiny_model("gpt2", texts=TEXTS, seed=3)
    folder = tmp_path / "decoder"
    small.hf.save_pretrained(folder)
    small.tokenizer.save_pretrained(folder)
    gen = ATVGenerator(str(folder), lm)  # the paper's GPT-2, as a local folder of a decoder
    assert gen.encoder.name == str(folder) and gen.encoder.pooling == "last"
    gen.encoder.eval()
    with torch.no_grad():
        got = gen.encoder.encode(TEXTS)
        want = torch.stack([small.hf(**small.tokenizer([t], return_tensors="pt"), output_hidden_states=True)
                            .hidden_states[-1][0, -1] for t in TEXTS])
    torch.testing.assert_close(got, want)
    gen.save(tmp_path / "g")
    assert json.loads((tmp_path / "g" / "generator.json").read_text())["encoder"] == str(folder)
    torch.testing.assert_close(ATVGenerator.load(tmp_path / "g", lm).eval().vectors(TEXTS), gen.eval().vectors(TEXTS))
