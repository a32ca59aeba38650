"""`python -m workbench eval`: argument parsing, bad inputs before model loading, one end-to-end run."""

from __future__ import annotations

import argparse

import pytest

from workbench import cli
from workbench.core.testing import tiny_model
from workbench.cli.eval import add_arguments, make_method, parse_prefixes, parse_tasks, parse_templates
from workbench.methods.prompting import BM25FewShot, FewShot, ZeroShot


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_parsing():
    args = parse("--method", "bm25", "--k", "4", "--tasks", "glue_sst2,boolq", "--n-test", "all", "--seeds", "42", "10",
                 "--templates", "0,2", "--prefixes", "A:,The answer is")
    assert args.n_test is None and args.seeds == [42, 10]
    assert parse_tasks(args.tasks) == ["glue_sst2", "boolq"] and parse_tasks(["unseen"]) == "unseen"
    assert parse_templates(args.templates) == [0, 2] and parse_templates(["all"]) == "all"
    assert parse_prefixes(args.prefixes) == ["A:", "The answer is"]
    assert isinstance(make_method("bm25", 4), BM25FewShot) and make_method("bm25", 4).k == 4
    assert type(make_method("few-shot")) is FewShot and type(make_method("zero-shot")) is ZeroShot
    defaults = parse()
    assert defaults.model == "smollm2-135m" and defaults.tasks == ["in_domain"] and defaults.n_test == 100


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "nope"], "nope"),
    (["--n-test", "0"], "n_test"),
    (["--templates", "5"], "template index 5"),
    (["--prefixes", "Q:"], "Q:"),
    (["--method", "few-shot", "--k", "0"], "k (number of demonstrations)"),
    (["--method", "atv"], "needs --generator DIR"),
])
def test_bad_inputs_fail_fast(argv, message, capsys, monkeypatch):
    monkeypatch.setattr("workbench.cli.eval.load_model", lambda *a, **k: pytest.fail("model loaded"))
    assert cli.main(["eval", *argv]) == 2
    assert message in capsys.readouterr().err


def test_no_cache_flag_reaches_evaluate(monkeypatch, capsys):
    """`--no-cache` turns the shared-prefix evaluation off (evaluate gets cache=False); the default is on."""
    from workbench.cli import eval as eval_cli

    seen = []

    class Stop(Exception):
        pass

    def fake_evaluate(*args, **kwargs):
        seen.append(kwargs["cache"])
        raise Stop

    monkeypatch.setattr(eval_cli, "evaluate", fake_evaluate)
    monkeypatch.setattr(eval_cli, "load_model", lambda *a, **k: tiny_model("llama"))
    for flags, expected in (([], True), (["--no-cache"], False)):
        with pytest.raises(Stop):
            cli.main(["eval", "--tasks", "glue_sst2", "--n-test", "1", "--no-progress", *flags])
        assert seen[-1] is expected
