"""One canonical name per method, one label map (workbench.methods.names) used by compare and the eval CLI."""

from __future__ import annotations

import pytest

import workbench as wb
from workbench.cli.eval import METHODS as CLI_METHODS
from workbench.cli.eval import make_method
from workbench.eval import compare
from workbench.methods import names

EXPECTED = {"zero-shot": "zero-shot", "few-shot": "k-shot", "bm25": "BM25 k-shot", "static-tv": "static TV",
            "elicit": "ELICIT", "i2cl": "I2CL", "lora": "LoRA", "atv": "ATV", "static-vectors": "static vectors"}


def test_every_class_has_its_canonical_name():
    assert {n: label.format(k="k") for n, (label, _) in names.METHODS.items()} == EXPECTED
    for name, (_, cls) in names.METHODS.items():
        assert cls.name == name and names.method_class(name) is cls
        assert names.display_label(name) == EXPECTED[name]
    assert names.method_class("static-tv") is wb.methods.StaticTaskVector


@pytest.mark.parametrize("bad", ["static_tv", "static TV", "ELICIT", "", None])
def test_unknown_name_lists_accepted_ones(bad):
    with pytest.raises(ValueError, match="accepted names: zero-shot, few-shot, bm25, static-tv"):
        names.method_class(bad)


def test_labels_of_instances():
    assert names.display_label(wb.methods.FewShot(k=4)) == "4-shot"
    assert names.display_label(wb.methods.BM25FewShot(k=16)) == "BM25 16-shot"
    assert names.display_label(wb.methods.StaticTaskVector()) == "static TV"

    class Custom(wb.Method):
        name = "custom"

    assert names.display_label(Custom()) == "custom"


def test_standard_methods_keys_are_the_labels():
    line_up = compare.standard_methods(None, budget="cpu-demo")
    assert list(line_up) == ["zero-shot", "4-shot", "BM25 4-shot", "static TV", "ELICIT", "I2CL", "LoRA"]
    assert all(names.display_label(m) == label for label, m in line_up.items())
    assert compare.labelled(list(line_up.values())) == line_up
    with pytest.raises(ValueError, match="two methods have the label 'zero-shot'"):
        compare.labelled([wb.methods.ZeroShot(), wb.methods.ZeroShot()])


def test_cli_methods_are_canonical_names():
    assert set(CLI_METHODS) <= set(names.METHODS)
    assert type(make_method("bm25", k=3)) is wb.methods.BM25FewShot and make_method("bm25", k=3).k == 3
    with pytest.raises(ValueError, match="unknown method 'static TV'"):
        make_method("static TV")
