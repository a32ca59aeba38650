"""The ablation run (issue 23 §5, workbench.analysis.ablations): budgets check their values before any model work,
trained generators are reused across steps, the source comparison trains what it names (source and input) and
the best source is the best label-restricted score."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from workbench.analysis import ablations
from workbench.atv.presets import build_generator


@pytest.mark.parametrize("changes, message", [
    ({"budget": "huge"}, "unknown budget 'huge'"),
    ({"sources": ["./missing-folder"]}, "./missing-folder"),
    ({"sources": ["scratch:0x8"]}, "scratch:0x8"),
    ({"sources": ["self:x"]}, "self:x"),
    ({"inputs": ["bare"]}, "'bare'"),
    ({"seeds": [42, "10"]}, "10"),
    ({"seeds": [1.5]}, "1.5"),
    ({"n_test": 0}, "n_test"),
    ({"side_n_test": -2}, "side_n_test must be a positive int or None (the whole test split), got -2"),
    ({"sources": ["nonsense:3"]}, "'nonsense:3'"),
    ({"tasks": ["boolq"], "target_task": "boolq", "off_target_tasks": ["boolq"]}, "off_target_tasks ['boolq']"),
    ({"target_task": "glue_cola"}, "target_task 'glue_cola'"),
    ({"n_trains": [8, 8]}, "repeats"),
    ({"colour": "red"}, "unknown budget settings ['colour']"),
    ({"line_up": "huge"}, "line_up (fitting budget of static TV and ELICIT)"),
])
def test_bad_budgets_are_refused_naming_the_value(changes, message):
    budget = changes.pop("budget", "tiny")
    with pytest.raises((ValueError, FileNotFoundError, TypeError), match=None) as err:
        ablations.as_budget(budget, **changes)
    assert message in str(err.value), str(err.value)


def test_budgets_are_valid_and_lists_become_tuples():
    for name in ablations.BUDGETS:
        assert ablations.as_budget(name) is not None
    plan = ablations.as_budget("cpu", tasks=["glue_sst2", "boolq"], seeds=[42, 10])
    assert plan.tasks == ("glue_sst2", "boolq") and plan.seeds == (42, 10)
    assert plan.scaling_budget().n_tasks == (1, 2)
    assert all(len(set(b.off_target_tasks) & set(b.tasks)) == 0
               for b in ablations.BUDGETS.values())


def test_fits_train_once_per_items_seed_and_tasks():
    calls = []
    fits = ablations.Fits()
    train = fits.trainer("x", lambda lm, tasks, n, seed: calls.append((n, seed)) or object())

    class T:
        def __init__(self, name):
            self.name = name

    first = train(None, [T("a")], 4, 42)
    assert train(None, [T("a")], 4, 42) is first
    train(None, [T("a")], 8, 42)
    train(None, [T("a")], 4, 10)
    train(None, [T("a"), T("b")], 4, 42)
    assert calls == [(4, 42), (8, 42), (4, 10), (4, 42)]


def test_best_source_is_the_highest_label_score_and_never_zero_shot():
    table = pd.DataFrame({"method": ["zero-shot", "ATV a · prompt", "ATV b · official"],
                          "label_mean": [90.0, 60.0, 70.0]})
    assert ablations.best_source(table) == "ATV b · official"
    with pytest.raises(ValueError, match="no trained method"):
        ablations.best_source(table.iloc[:1])


def test_parse_label_round_trips_and_names_the_labels():
    plan = ablations.as_budget("tiny")
    for source in plan.sources:
        for generator_input in plan.inputs:
            assert ablations.parse_label(ablations.source_label(source, generator_input), plan) == (
                source, generator_input)
    with pytest.raises(ValueError, match="ATV scratch:2x32 · prompt"):
        ablations.parse_label("ATV gpt2 · prompt", plan)


def test_source_comparison_trains_each_source_and_input_on_a_tiny_model(llama_lm):
    plan = ablations.as_budget("tiny", tasks=["glue_sst2"], target_task="glue_sst2", n_train=2,
                               sources=["scratch:2x16", "self:1"], seeds=[3])
    fits = ablations.Fits()
    rows = ablations.compare_sources(llama_lm, plan, fits)
    table = ablations.source_table(rows, n_boot=50)
    labels = [ablations.source_label(s, i) for s in plan.sources for i in plan.inputs]
    assert list(table["method"]) == ["zero-shot", *labels]
    assert set(rows["seed"]) == {3}
    for label in labels:
        atv = ablations.fitted(fits, label, plan)
        source, generator_input = ablations.parse_label(label, plan)
        assert atv.generator.generator_input == generator_input
        assert atv.generator.describe()["encoder"].startswith(source.split(":")[0])
        assert atv.generator.meta["train_config"]["seed"] == 3
    best = ablations.best_source(table)
    assert best in labels
    with pytest.raises(ValueError, match="was not trained"):
        ablations.fitted(fits, labels[0], dataclasses.replace(plan, n_train=3))


def test_build_generator_standardises_what_its_config_reads(llama_lm):
    """The states are standardised over the texts the generator will read: the official input's, not the prompt's."""
    import torch

    from workbench.atv.examples import training_examples
    from workbench.tasks.registry import resolve_tasks

    tasks = resolve_tasks(["glue_sst2"])
    means = {}
    for generator_input in ("prompt", "official"):
        cfg = dataclasses.replace(ablations.BUDGETS["tiny"].config, n_train=3, generator_input=generator_input, seed=5)
        generator = build_generator(llama_lm, "self:1", tasks, cfg)
        texts = list(dict.fromkeys(ex.generator_text for ex in training_examples(tasks, 3, 5, cfg.prefix,
                                                                                  generator_input)))
        with torch.no_grad():
            want = generator.encoder.encode(texts).float().mean(0)
        torch.testing.assert_close(generator.input_mean, want)
        means[generator_input] = generator.input_mean.clone()
    assert not torch.allclose(means["prompt"], means["official"])


def test_one_body_cache_serves_every_evaluation_of_a_run_with_the_same_rows(llama_lm):
    """The run's evaluations share the frozen model's prompt bodies: a second evaluation computes none, and its
    rows equal those of an evaluation with its own cache."""
    from workbench.analysis import scaling
    from workbench.methods import ZeroShot
    from workbench.tasks.registry import resolve_tasks

    fits = ablations.Fits(eval_cache_mb=200.0)
    plan = ablations.as_budget("tiny").scaling_budget(fits.bodies)
    tasks = resolve_tasks(["glue_sst2"])
    first = scaling.evaluate_rows(llama_lm, {"zero-shot": ZeroShot()}, tasks, 42, plan)
    misses = fits.bodies.misses
    assert misses > 0
    again = scaling.evaluate_rows(llama_lm, {"again": ZeroShot()}, tasks, 42, plan)
    assert fits.bodies.misses == misses and fits.bodies.hits > 0
    alone = scaling.evaluate_rows(llama_lm, {"zero-shot": ZeroShot()}, tasks, 42, ablations.as_budget("tiny")
                                  .scaling_budget())
    cols = ["item", "template", "prefix", "prediction", "correct", "label_correct"]
    pd.testing.assert_frame_equal(first[cols], alone[cols])
    pd.testing.assert_frame_equal(first[cols], again[cols])


def test_a_shared_prefix_store_gives_the_same_training_and_computes_each_prefix_once(llama_lm):
    """Two trainings on the same examples with one prefix store: the second computes no prefix and its history
    (losses) equals that of a training with a store of its own; a store of another model is refused."""
    import torch

    from workbench.atv.fastpath import PrefixStore
    from workbench.core.testing import tiny_model
    from workbench.tasks.registry import resolve_tasks

    tasks = resolve_tasks(["glue_sst2"])
    cfg = dataclasses.replace(ablations.BUDGETS["tiny"].config, n_train=3, seed=4, tasks=())
    store = PrefixStore(200.0)
    histories = []
    for shared in (store, store, None):
        generator = build_generator(llama_lm, "scratch:2x16", tasks, cfg)
        before = len(store)
        histories.append(ablations.train_atv(llama_lm, generator, tasks, cfg, progress=False, prefix_store=shared))
        if shared is store and before:
            assert len(store) == before  # nothing new: every prefix came from the first training
    assert len(store) > 0
    for h in histories[1:]:
        torch.testing.assert_close(torch.tensor(h["train_loss"].to_numpy()),
                                   torch.tensor(histories[0]["train_loss"].to_numpy()))
    other = tiny_model("llama", texts=[item.input for item in tasks[0].train[:30]], seed=7)
    assert other.fingerprint != llama_lm.fingerprint
    with pytest.raises(ValueError, match="prefix store holds caches of model"):
        ablations.train_atv(other, build_generator(other, "scratch:2x16", tasks, cfg), tasks, cfg,
                            progress=False, prefix_store=store)
