"""ATVGenerator: shapes, parameter counts, ATV-Light, save/load round trip, model-mismatch errors, the ATV Method."""

from __future__ import annotations

import pytest
import torch

from workbench.atv.generator import ATVGenerator, CheckpointMismatch
from workbench.core.architectures import lora_parameter_count
from workbench.core.encoders import load_encoder
from workbench.core.interventions import Injection
from workbench.core.testing import tiny_model
from workbench.methods.atv import ATV
from workbench.methods.base import Method

TEXTS = ["the movie was great", "a sad and slow film", "hello world"]


def make(lm, width: int = 32, **kw) -> ATVGenerator:
    torch.manual_seed(0)
    return ATVGenerator(load_encoder(f"scratch:1x{width}", tokenizer=lm.tokenizer, seed=0), lm, **kw)


def test_vectors_shape_and_parameters(llama_lm):
    gen = make(llama_lm)
    v = gen.vectors(TEXTS)
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    assert v.shape == (3, L, d) and v.requires_grad
    encoder = sum(p.numel() for p in gen.encoder.parameters())
    assert gen.trainable_parameters() == encoder + 32 * L * d + L * d
    report = gen.parameter_report(llama_lm)
    assert report["this"] == report["ATV"] == gen.trainable_parameters()
    # tiny llama: q_proj 32->32, v_proj 32->16 (2 kv heads of 8) in each of 4 layers
    assert report["LoRA r=8"] == lora_parameter_count(llama_lm, 8) == 4 * 8 * ((32 + 32) + (32 + 16))
    assert gen(torch.randn(2, 32)).shape == (2, L, d)  # precomputed small-model states


def test_light_variant_is_smaller_and_trains_adapters(llama_lm):
    lm = tiny_model("llama", texts=TEXTS, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    encoder = load_encoder("scratch:2x64", tokenizer=lm.tokenizer, seed=0)
    full = sum(p.numel() for p in encoder.parameters()) + 64 * lm.num_layers * 64 + lm.num_layers * 64
    light = ATVGenerator.light(encoder, lm, lora_r=4, bottleneck=8)
    names = [n for n, p in light.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in names) and all("lora_" in n or n.startswith("projection") for n in names)
    assert light.trainable_parameters() < full == light.parameter_report(lm)["ATV"]
    assert light.vectors(TEXTS).shape == (3, lm.num_layers, 64)


@pytest.mark.parametrize("variant", ["full", "light"])
def test_save_load_round_trip(llama_lm, tmp_path, variant):
    lm = llama_lm
    if variant == "full":
        gen = make(lm)
    else:
        gen = ATVGenerator.light(load_encoder("scratch:1x32", tokenizer=lm.tokenizer), lm, bottleneck=4)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(0.01 * torch.randn_like(p))  # as if trained (LoRA B starts at zero)
    gen.meta = {"scale": 0.5, "layers": "all", "positions": "last", "generator_input": "prompt",
                "train_config": {"lr": 1}}
    gen.save(tmp_path / "g")
    gen.save(tmp_path / "g")  # overwriting is fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]  # no temp folders left
    back = ATVGenerator.load(tmp_path / "g", lm)
    gen.eval(), back.eval()
    with torch.no_grad():
        assert torch.equal(gen.vectors(TEXTS), back.vectors(TEXTS))
    meta = ATVGenerator.read_meta(tmp_path / "g")
    assert meta["lm"] == lm.name and meta["num_layers"] == lm.num_layers and "package_versions" in meta
    assert back.meta["scale"] == 0.5 and ATV(back).scale == 0.5


def test_load_refuses_other_model(llama_lm, tmp_path):
    make(llama_lm).save(tmp_path / "g")
    with pytest.raises(CheckpointMismatch, match="layers L: checkpoint 4, model 2"):
        ATVGenerator.load(tmp_path / "g", tiny_model("llama", texts=TEXTS, num_hidden_layers=2, name="tiny-llama"))
    with pytest.raises(CheckpointMismatch, match="hidden size d"):
        ATVGenerator.load(tmp_path / "g", tiny_model("llama", texts=TEXTS, hidden_size=64, name="tiny-llama"))
    with pytest.raises(CheckpointMismatch, match="large model: checkpoint 'tiny-llama', model 'tiny-gpt2'"):
        ATVGenerator.load(tmp_path / "g", tiny_model("gpt2", texts=TEXTS))
    with pytest.raises(FileNotFoundError, match="not a generator checkpoint"):
        ATVGenerator.load(tmp_path, llama_lm)


def test_bad_arguments(llama_lm):
    with pytest.raises(ValueError, match="wb.Encoder"):
        ATVGenerator(object(), llama_lm)  # a string is a source name (load_encoder), anything else an error
    with pytest.raises(ValueError, match="bottleneck"):
        make(llama_lm, bottleneck=0)
    with pytest.raises(ValueError, match="ATVGenerator"):
        ATV("not a generator")


def test_atv_method_prepare(llama_lm):
    gen = make(llama_lm).train()
    method = ATV(gen, scale=0.5)
    assert isinstance(method, Method)
    batch = method.prepare(llama_lm, None, [], TEXTS)
    assert batch.prompts == [llama_lm.render(t) for t in TEXTS]
    assert isinstance(batch.intervention, Injection) and batch.intervention.positions == "last"
    assert not batch.intervention.vectors.requires_grad and gen.training  # mode restored
    gen.eval()
    with torch.no_grad():
        assert torch.equal(batch.intervention.vectors, gen.vectors(TEXTS))
    assert torch.equal(method.vectors(TEXTS), batch.intervention.vectors)
    assert method.config()["scale"] == 0.5
    with pytest.raises(CheckpointMismatch):
        method.prepare(tiny_model("gpt2", texts=TEXTS), None, [], TEXTS)


def test_atv_runs_in_evaluate(llama_lm):
    from workbench.eval.evaluate import evaluate
    from workbench.tasks.registry import load_task

    df = evaluate(llama_lm, ATV(make(llama_lm), scale=0.5), [load_task("glue_sst2")], n_test=2, templates=[0],
                  prefixes=["A:"], progress=False)
    assert len(df) == 2


def test_save_never_replaces_what_it_did_not_write(llama_lm, tmp_path):
    """Issue #12: save over a folder of the user's files (or over a file) must refuse, naming the path."""
    from workbench.atv.generator import is_checkpoint

    gen = make(llama_lm)
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=f"{mine}.*folder the workbench did not write.*overwrite=True"):
        gen.save(mine)
    (tmp_path / "file.txt").write_text("keep me too")
    with pytest.raises(FileExistsError, match="file.txt.*a file"):
        gen.save(tmp_path / "file.txt")
    assert (mine / "notes.txt").read_text() == "keep me" and (tmp_path / "file.txt").read_text() == "keep me too"
    assert not is_checkpoint(mine) and not is_checkpoint(tmp_path / "file.txt") and not is_checkpoint(tmp_path / "no")
    gen.save(tmp_path / "g")
    assert is_checkpoint(tmp_path / "g")
    gen.save(tmp_path / "g")  # its own checkpoint: replaced
    gen.save(mine, overwrite=True)
    assert is_checkpoint(mine)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "g", "results"]  # no .x.old-PID, no temp


def test_load_restores_the_training_tasks(llama_lm, tmp_path):
    gen = make(llama_lm)
    gen.meta = {"scale": 0.5, "tasks": ["glue_sst2", "crows_pairs"],
                "train_config": {"tasks": ["glue_sst2", "crows_pairs"]}}
    gen.save(tmp_path / "g")
    assert ATVGenerator.read_meta(tmp_path / "g")["tasks"] == ["glue_sst2", "crows_pairs"]
    assert ATVGenerator.load(tmp_path / "g", llama_lm).meta["tasks"] == ["glue_sst2", "crows_pairs"]
