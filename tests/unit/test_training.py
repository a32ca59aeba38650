"""train_atv on tiny models: learning, fast == naive training, resume equivalence, checkpoints, bad inputs, presets."""

from __future__ import annotations

import argparse
import math

import pytest
import torch

from workbench.atv.checkpoints import latest_checkpoint
from workbench.atv.examples import training_examples
from workbench.atv.generator import ATVGenerator
from workbench.atv.presets import get_preset, presets
from workbench.atv.training import TrainConfig, train_atv
from workbench.cli.train import add_arguments, build
from workbench.core.encoders import load_encoder
from workbench.core.testing import tiny_model
from workbench.tasks.registry import Item, Task

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu"]
ITEMS = [(f"{a} {b}", "positive" if i % 2 else "negative")
         for i, (a, b) in enumerate(zip(WORDS, WORDS[3:] + WORDS[:3]))]
TASK = Task(name="synth", category="NLU", domain="NLU", templates=["Review: {input}", "Text: {input} ?", "Q {input}"],
            labels=("positive", "negative"), in_domain=True, train=[Item(*it) for it in ITEMS],
            valid=[Item(*it) for it in ITEMS[:4]], test=[Item(*it) for it in ITEMS])
FAST = {"n_train": 8, "batch_size": 4, "scale": 1.0, "lr": 1e-2, "valid_items": 4}


@pytest.fixture(scope="module")
def lm():
    return tiny_model("llama", texts=WORDS + ["Review", "Text", "Q"])


def generator(lm, seed: int = 0) -> ATVGenerator:
    torch.manual_seed(seed)
    return ATVGenerator(load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=seed), lm)


def weights(gen: ATVGenerator) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in gen.state_dict().items()}


def test_defaults_follow_the_paper():
    c = TrainConfig()
    assert (c.lr, c.weight_decay, c.epochs, c.scale, c.n_train, c.batch_size) == (5e-4, 1e-5, 15, 1e-3, 90, 1)
    assert (c.layers, c.positions, c.seed, c.generator_input, c.prefix) == ("all", "last", 42, "prompt", "A:")
    assert c.fast_path and c.encoder_train_mode == "train"


def test_examples_three_templates_per_item():
    ex = training_examples([TASK], n_train=5, seed=42)
    assert len(ex) == 15 and {e.template for e in ex} == {0, 1, 2}
    assert all(e.text.endswith("\nA:") and e.target in (" positive", " negative") for e in ex)
    assert ex == training_examples([TASK], n_train=5, seed=42) != training_examples([TASK], n_train=5, seed=10)
    assert training_examples(TASK, n_train=5, seed=42) == ex  # a bare Task is a list of one, as everywhere
    assert [e.task for e in training_examples("glue_sst2", n_train=1)] == ["glue_sst2"] * 3  # and so is a name
    official = training_examples([TASK], n_train=1, generator_input="official")[0]
    assert official.generator_text == f"Q: {ITEMS[official.item][0]} \n A: "


def test_loss_decreases_and_history(lm):
    seen = []
    df = train_atv(lm, generator(lm), [TASK], TrainConfig(epochs=4, **FAST), progress=False, callback=seen.append)
    assert list(df.columns)[:4] == ["epoch", "train_loss", "valid_loss", "valid_acc"] and list(df.epoch) == [1, 2, 3, 4]
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0] and df.valid_loss.iloc[-1] < df.attrs["initial"]["valid_loss"]
    assert len(seen) == 4 and df.attrs["config"]["scale"] == 1.0 and df.attrs["prefix_cache"]["hits"] > 0


def test_fast_and_naive_training_agree(lm):
    """Same losses and same vectors after training (weights themselves may differ where the true gradient is 0,
    e.g. attention key biases, since Adam normalises rounding noise there to a full step)."""
    losses, vectors = [], []
    texts = [e.generator_text for e in training_examples([TASK], n_train=4)]
    for fast in (True, False):
        gen = generator(lm)
        df = train_atv(lm, gen, [TASK], TrainConfig(epochs=2, fast_path=fast, encoder_train_mode="eval", **FAST),
                       progress=False)
        losses.append(df.train_loss.tolist() + df.valid_loss.tolist())
        with torch.no_grad():
            vectors.append(gen.vectors(texts))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(vectors[0], vectors[1], rtol=1e-4, atol=1e-5)


def test_resume_gives_the_same_weights(lm, tmp_path):
    config = TrainConfig(epochs=3, **FAST)  # dropout on: the RNG state must be restored too
    full = generator(lm)
    df_full = train_atv(lm, full, [TASK], config, checkpoint_dir=tmp_path / "a", progress=False)
    part = generator(lm)
    train_atv(lm, part, [TASK], TrainConfig(epochs=2, **FAST), checkpoint_dir=tmp_path / "b", progress=False)
    assert latest_checkpoint(tmp_path / "b").name == "epoch-002"
    resumed = generator(lm, seed=1)  # different init: everything must come from the checkpoint
    df = train_atv(lm, resumed, [TASK], config, checkpoint_dir=tmp_path / "b", resume=True, progress=False)
    assert list(df.epoch) == [1, 2, 3] and df.train_loss.tolist() == df_full.train_loss.tolist()
    for k, v in weights(full).items():
        assert torch.equal(v, weights(resumed)[k]), k
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".lock", "LATEST", "epoch-003"]
    back = ATVGenerator.load(tmp_path / "b" / "epoch-003" / "generator", lm)
    assert back.meta["train_config"]["epochs"] == 3
    with pytest.raises(ValueError, match="another config.*lr"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(epochs=4, **{**FAST, "lr": 1e-3}),
                  checkpoint_dir=tmp_path / "b", resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_checkpoint(lm, tmp_path):
    gen = generator(lm)

    def poison(df):
        with torch.no_grad():
            gen.projection.weight.fill_(math.nan)

    with pytest.raises(FloatingPointError, match="non-finite.*epoch 2.*epoch-001"):
        train_atv(lm, gen, [TASK], TrainConfig(epochs=3, **FAST), checkpoint_dir=tmp_path, callback=poison,
                  progress=False)
    assert latest_checkpoint(tmp_path).name == "epoch-001"
    assert torch.isfinite(ATVGenerator.load(tmp_path / "epoch-001" / "generator", lm).projection.weight).all()


def test_frozen_encoder_trains_only_the_projection(lm):
    gen = generator(lm)
    before = weights(gen)
    train_atv(lm, gen, [TASK], TrainConfig(epochs=1, encoder_train_mode="frozen", **FAST), progress=False)
    after = weights(gen)
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert not torch.equal(before["projection.weight"], after["projection.weight"])


def test_positions_all_uses_naive_path(lm):
    df = train_atv(lm, generator(lm), [TASK], TrainConfig(epochs=1, positions="all", **FAST), progress=False)
    assert df.attrs["prefix_cache"]["stored"] == 0 and math.isfinite(df.train_loss[0])


def test_mixed_precision_generator_trains(lm):
    """generator_precision="bfloat16": the generator runs under autocast, the LLM gets float32 vectors, it learns."""
    from workbench.atv.fastpath import PrefixStore
    from workbench.atv.training import Batcher

    config = TrainConfig(epochs=3, generator_precision="bfloat16", **FAST)
    gen = generator(lm)
    batcher = Batcher(lm, training_examples([TASK], n_train=2), config, PrefixStore(), "t")
    assert batcher.vectors(gen, [0, 1]).dtype == torch.float32
    df = train_atv(lm, gen, [TASK], config, progress=False)
    assert df.train_loss.iloc[-1] < df.train_loss.iloc[0] and all(p.dtype == torch.float32 for p in gen.parameters())
    with pytest.raises(ValueError, match="generator_precision 'fp8'.*bfloat16"):
        TrainConfig(generator_precision="fp8").validate()


def test_shared_generator_text_is_encoded_once(lm):
    """With the official generator input an item's templates share one text: one generator row, as the official
    loop computes one vector per item."""
    from workbench.atv.fastpath import PrefixStore
    from workbench.atv.training import Batcher

    config = TrainConfig(generator_input="official", **FAST)
    batcher = Batcher(lm, training_examples([TASK], n_train=2, generator_input="official"), config, PrefixStore(), "t")
    gen = generator(lm).eval()
    rows = []
    gen.register_forward_hook(lambda m, args, out: rows.append(out.shape[0]))
    vectors = batcher.vectors(gen, range(6))
    assert rows == [2] and all(torch.equal(vectors[i], vectors[i + 1]) for i in (0, 1, 3, 4))
    assert torch.allclose(vectors, gen([e.generator_text for e in batcher.examples]), atol=1e-6)


def _torch_has_fused_adam(device: torch.device) -> bool:
    """torch's own answer: the device types its fused optimizer kernels support (private helper, else a trial)."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:
        try:
            torch.optim.Adam([torch.nn.Parameter(torch.zeros(1, device=device))], fused=True)
        except (RuntimeError, ValueError):
            return False
        return True
    return device.type in _get_fused_kernels_supported_devices()


def test_optimizer_is_adam_fused_where_available(monkeypatch):
    """make_optimizer promises Adam, fused where torch has the kernel for the device, else plain Adam (same lr / wd)."""
    from workbench.atv.training import make_optimizer

    param = torch.nn.Parameter(torch.zeros(3))
    opt = make_optimizer([param], TrainConfig(lr=3e-3))
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 1e-5 and opt.defaults["lr"] == 3e-3
    assert bool(opt.defaults["fused"]) == _torch_has_fused_adam(param.device)

    real = torch.optim.Adam

    def no_fused_kernel(params, fused=None, **kwargs):
        if fused:
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", no_fused_kernel)
    fallback = make_optimizer([param], TrainConfig(lr=3e-3))
    assert type(fallback) is real and not fallback.defaults["fused"]
    assert fallback.defaults["weight_decay"] == 1e-5 and fallback.defaults["lr"] == 3e-3


@pytest.mark.parametrize("scale", [math.nan, math.inf, 0.0, -1e-3])
def test_bad_scale(lm, scale):
    with pytest.raises(ValueError, match="scale must be a positive finite"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(scale=scale))


def test_bad_inputs(lm):
    with pytest.raises(ValueError, match="tasks is empty"):
        train_atv(lm, generator(lm), [], TrainConfig())
    with pytest.raises(ValueError, match="only 2 training items.*batch_size=4"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(n_train=2, batch_size=4))
    with pytest.raises(ValueError, match="unknown generator_input"):
        TrainConfig(generator_input="chat").validate()
    with pytest.raises(ValueError, match="epochs must be a positive finite int"):
        TrainConfig(epochs=0).validate()
    with pytest.raises(ValueError, match="needs a checkpoint_dir"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(**FAST), resume=True)
    with pytest.raises(ValueError, match="layer index 9 out of range"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(layers=[9], **FAST))


def test_presets():
    assert set(presets) >= {"paper", "cpu-demo"}
    assert presets["paper"].model == "meta-llama/Meta-Llama-3-8B" and presets["paper"].encoder == "gpt2"
    assert len(presets["paper"].tasks) == 20 and presets["paper"].config == TrainConfig()
    with pytest.raises(KeyError, match="available presets: paper, cpu-demo"):
        presets["nope"]
    with pytest.raises(ValueError, match="unknown preset 'nope'; available presets"):
        get_preset("nope")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    preset, config = build(parser.parse_args(["--preset", "cpu-demo", "--epochs", "2", "--tasks", "glue_sst2",
                                              "--naive"]))
    assert config.epochs == 2 and not config.fast_path and preset.tasks == ("glue_sst2",)
    assert config.scale == presets["cpu-demo"].config.scale


# --------------------------------------------------------------------------------------------- tasks by name
ONE = {"n_train": 2, "batch_size": 1, "scale": 1.0, "lr": 1e-2, "valid_items": 0, "epochs": 1}
TASK2 = Task(name="synth2", category="NLU", domain="NLU", templates=TASK.templates, labels=TASK.labels, in_domain=True,
             train=TASK.train[::-1], valid=TASK.valid, test=TASK.test)


def test_tasks_by_name_task_or_mixed_list(lm, tmp_path):
    """`wb.train_atv(lm, gen, ["glue_sst2"], cfg)` used to raise AttributeError ('str' has no attribute 'train')."""
    from workbench.tasks.registry import load_task

    df = train_atv(lm, generator(lm), "glue_sst2", TrainConfig(**ONE), progress=False)
    assert df.attrs["config"]["tasks"] == ["glue_sst2"]
    gen = generator(lm)
    df = train_atv(lm, gen, ["glue_sst2", TASK, load_task("glue_sst2"), "glue_sst2"], TrainConfig(**ONE),
                   checkpoint_dir=tmp_path, progress=False)
    assert df.attrs["config"]["tasks"] == ["glue_sst2", "synth"] and gen.meta["tasks"] == ["glue_sst2", "synth"]
    assert train_atv(lm, generator(lm), TASK, TrainConfig(**ONE), progress=False).attrs["config"]["tasks"] == ["synth"]
    saved = ATVGenerator.read_meta(tmp_path / "epoch-001" / "generator")
    assert saved["tasks"] == saved["train_config"]["tasks"] == ["glue_sst2", "synth"]
    assert ATVGenerator.load(tmp_path / "epoch-001" / "generator", lm).meta["tasks"] == ["glue_sst2", "synth"]
    with pytest.raises(ValueError, match=r"element 1 of tasks, 3 \(int\) is neither a task name nor a Task"):
        train_atv(lm, generator(lm), ["glue_sst2", 3], TrainConfig(**ONE), progress=False)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        train_atv(lm, generator(lm), ["nope"], TrainConfig(**ONE), progress=False)
    with pytest.raises(ValueError, match=r"config.tasks \['glue_sst2'\] differ from the tasks given"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(tasks=("glue_sst2",), **ONE), progress=False)


# --------------------------------------------------------------------------------------------- checkpoint safety
def test_resume_with_other_tasks_or_config_names_the_difference(lm, tmp_path):
    train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ValueError,
                       match=r"another config \(tasks: checkpoint \['synth'\], now \['synth', 'synth2'\]\)"):
        train_atv(lm, generator(lm), [TASK, TASK2], TrainConfig(**ONE), checkpoint_dir=tmp_path, resume=True,
                  progress=False)
    with pytest.raises(ValueError, match=r"another config \(seed: checkpoint 42, now 1\)"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(seed=1, **ONE), checkpoint_dir=tmp_path, resume=True,
                  progress=False)
    df = train_atv(lm, generator(lm), [TASK], TrainConfig(**{**ONE, "epochs": 2}), checkpoint_dir=tmp_path,
                   resume=True, progress=False)
    assert list(df.epoch) == [1, 2]


def test_fresh_run_never_deletes_earlier_checkpoints(lm, tmp_path):
    """Issue #12: a run without resume into a folder of checkpoints used to rotate them away."""
    train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path, progress=False)
    before = (tmp_path / "epoch-001" / "training_state.safetensors").read_bytes()
    with pytest.raises(FileExistsError, match=r"already holds checkpoints \(epoch-001\); pass resume=True"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path, progress=False)
    assert (tmp_path / "epoch-001" / "training_state.safetensors").read_bytes() == before
    with pytest.raises(FileNotFoundError, match="resume=True but .* holds no complete checkpoint"):
        train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path / "empty", resume=True,
                  progress=False)


def test_resume_without_latest_finds_the_newest_complete_checkpoint(lm, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 2})
    full = generator(lm)
    train_atv(lm, full, [TASK], config, progress=False)
    train_atv(lm, generator(lm), [TASK], TrainConfig(**{**FAST, "epochs": 1}), checkpoint_dir=tmp_path, progress=False)
    (tmp_path / "LATEST").write_text("epoch-009\n")  # stale pointer (e.g. a crash or a hand edit)
    resumed = generator(lm, seed=1)
    df = train_atv(lm, resumed, [TASK], config, checkpoint_dir=tmp_path, resume=True, progress=False)
    assert list(df.epoch) == [1, 2] and sorted(p.name for p in tmp_path.iterdir()) == [".lock", "LATEST", "epoch-002"]
    assert all(torch.equal(v, weights(resumed)[k]) for k, v in weights(full).items())
    (tmp_path / "LATEST").unlink()
    df = train_atv(lm, generator(lm), [TASK], TrainConfig(**{**FAST, "epochs": 3}), checkpoint_dir=tmp_path,
                   resume=True, progress=False)
    assert list(df.epoch) == [1, 2, 3]


def test_second_training_on_a_locked_folder_fails_at_once(lm, tmp_path):
    from locks import lock_held_by_a_thread

    from workbench.atv.checkpoints import CheckpointBusy

    with lock_held_by_a_thread(tmp_path):
        with pytest.raises(CheckpointBusy, match="in use by another training .*pid .* on host"):
            train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path, progress=False)
    assert not any(p.name.startswith("epoch-") for p in tmp_path.iterdir())
    train_atv(lm, generator(lm), [TASK], TrainConfig(**ONE), checkpoint_dir=tmp_path, progress=False)


def test_example_longer_than_the_model_is_a_clear_error():
    short = tiny_model("gpt2", texts=WORDS + ["Review", "Text", "Q"], n_positions=6)
    with pytest.raises(ValueError, match=r"train item \d+ of task 'synth' \(template 0\) has \d+ tokens.*6 positions"):
        train_atv(short, generator(short), [TASK], TrainConfig(**ONE), progress=False)
