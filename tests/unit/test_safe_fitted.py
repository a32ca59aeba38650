"""Issue 20 §1 / §5 for fitted baselines: a fit folder is safetensors + JSON (LoRA's adapter as peft writes it),
reloads bit-identically, never unpickles (a pickle planted in place of any non-JSON file, or as an old ``fitted.pt``,
never runs) and a damaged or old folder is a clear error naming the file and how to refit."""

from __future__ import annotations

import io
import json
import math
import pathlib
import re
import shutil
from dataclasses import fields, is_dataclass

import numpy as np
import pytest
import torch
from peft import LoraConfig
from test_fitted import FACTORIES
from test_static_tv import single_thread, texts_for, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

from workbench.core import safe_state
from workbench.core.inference import next_token_logits
from workbench.methods import StaticTaskVector
from workbench.methods.demos import DemoPrompt
from workbench.methods.fitted import FittedFileError, fit_key, fit_or_load, load_fitted, save_fitted
from workbench.tasks.registry import Item
from workbench.tasks.retrieval import QueryIndex

FILES = {"static": {"fitted.json", "fitted.safetensors"}}
FILES["elicit"] = FILES["i2cl"] = FILES["static"]
FILES["lora"] = FILES["static"] | {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"}


@pytest.fixture(scope="module")
def world():
    tasks = toy_tasks()
    return toy_lm("llama", tasks), tasks


@pytest.fixture(scope="module")
def fits(world, tmp_path_factory):
    """Per method kind: the freshly fitted method and its saved fit folder (left untouched: tests copy it)."""
    lm, tasks = world
    root = tmp_path_factory.mktemp("fits")
    out = {}
    for kind, factory in FACTORIES.items():
        method = factory()
        assert fit_or_load(method, lm, tasks[:2], root / kind)[1] is False
        out[kind] = (method, root / kind)
    return out


def copy_of(fits, kind, tmp_path):
    dst = tmp_path / kind
    shutil.copytree(fits[kind][1], dst)
    return dst


def reload(world, kind, folder):
    lm, tasks = world
    method = FACTORIES[kind]()
    return method, fit_or_load(method, lm, tasks[:2], folder)


def logits(lm, method, task):
    batch = method.prepare(lm, task, task.test, texts_for(task))
    with method.active(lm):
        return next_token_logits(lm, batch.prompts, batch.intervention)


def assert_same(a, b, where="value"):
    """Same types, dict orders, dtypes and values, all the way down."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    elif isinstance(a, dict):
        assert list(a) == list(b), f"{where}: keys {list(a)} vs {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, QueryIndex):
        assert_same(vars(a), vars(b), f"{where}.__dict__")
    elif isinstance(a, LoraConfig):
        assert a.to_dict() == b.to_dict(), where
    elif is_dataclass(a):
        for f in fields(a):
            assert_same(getattr(a, f.name), getattr(b, f.name), f"{where}.{f.name}")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b and (not isinstance(a, float) or math.copysign(1, a) == math.copysign(1, b)), where


class Payload:
    """Unpickling this creates `marker` (harmless): a file that would show a loader ran code."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


def torch_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)  # the pickle the earlier version's fitted.pt was and torch.load(weights_only=False) runs
    return buffer.getvalue()


def crafted_pickle(tmp_path):
    """The bytes of a crafted pickle and the marker file that would show it ran."""
    marker, probe = tmp_path / "PAYLOAD-RAN", tmp_path / "probe"
    torch.load(io.BytesIO(torch_pickle(Payload(probe))), weights_only=False)  # the payload works where unpickled
    assert probe.exists()
    return torch_pickle(Payload(marker)), marker


def rewrite_record(folder, edit):
    record = json.loads((folder / "fitted.json").read_text())
    edit(record)
    (folder / "fitted.json").write_text(json.dumps(record))


def data_files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".json")


# ------------------------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("kind", list(FACTORIES))
def test_reload_is_safetensors_and_json_with_identical_attributes_and_logits(kind, world, fits):
    lm, tasks = world
    fitted, folder = fits[kind]
    assert {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} == FILES[kind]
    again, (_, reloaded) = reload(world, kind, folder)
    assert reloaded
    for name in fitted.fitted_attributes:
        assert_same(getattr(again, name), getattr(fitted, name), f"{kind}.{name}")
    for task in tasks:  # in-domain and unseen (retrieval) alike
        assert torch.equal(logits(lm, again, task), logits(lm, fitted, task)), task.name


def test_lora_adapter_is_what_peft_loads(world, fits):
    from peft import PeftModel

    method, folder = fits["lora"]
    fresh = toy_lm("llama", world[1])
    peft_model = PeftModel.from_pretrained(fresh.hf, str(folder / "adapter"))
    loaded = {n: p for n, p in peft_model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(method.state) > 0
    for name, tensor in method.state.items():
        a, b = name.split(".lora_")
        assert torch.equal(loaded[f"base_model.model.{a}.lora_{b.replace('.weight', '.default.weight')}"], tensor)


def test_codec_keeps_types_orders_and_special_values():
    values = {
        "tuple": (1, "a", None, True), "int_keys": {3: 0.5, 1: -0.0, 2: float("inf")}, "nan": float("nan"),
        "dollar": {"$tensor": "not a reference", "b": [1, 2]}, "nested": {"z": [(1, 2), {"x": {(1, "k"): False}}]},
        "bf16": torch.arange(6, dtype=torch.bfloat16).view(2, 3), "strided": torch.arange(12.0).view(3, 4).T,
        "empty": torch.zeros(0, 4), "array": np.arange(6, dtype=np.int16).reshape(2, 3), "scalar": np.float32(1.5),
        "record": DemoPrompt("text", Item("in", "out"), "query", [3, 1], 1, {"k": (2,)}), "big": 2 ** 70,
    }
    plain, tensors = safe_state.encode(values)
    json.loads(json.dumps(plain))  # plain JSON
    back = safe_state.decode(json.loads(json.dumps(plain)), tensors, "state.json")
    for name, value in values.items():
        assert_same(back[name], value, name)


def test_a_type_the_format_cannot_keep_is_a_type_error_at_save(world, tmp_path):
    lm, tasks = world
    method = FACTORIES["static"]()
    method.prompts = {"toy_sentiment": [{1, 2}]}
    with pytest.raises(TypeError, match=r"StaticTaskVector\.prompts\['toy_sentiment'\]\[0\].*builtins\.set"):
        save_fitted(method, tmp_path / "m", fit_key(method, lm, ["toy_sentiment"]), 1.0)
    assert not (tmp_path / "m").exists()


# ------------------------------------------------------------------------------------------ planted pickles
@pytest.mark.parametrize("kind", list(FACTORIES))
@pytest.mark.parametrize("record_updated", [False, True], ids=["stale-hash", "hash-forged"])
def test_a_pickle_planted_in_place_of_any_data_file_never_runs(kind, record_updated, world, fits, tmp_path):
    payload, marker = crafted_pickle(tmp_path)
    names = [p.relative_to(fits[kind][1]).as_posix() for p in data_files(fits[kind][1])]
    assert names and all(n.endswith(".safetensors") for n in names)
    for name in names:
        folder = copy_of(fits, kind, tmp_path / name.replace("/", "_"))
        (folder / name).write_bytes(payload)
        if record_updated:  # an attacker who also rewrites the record's hash reaches the safetensors parser
            rewrite_record(folder, lambda r: r["files"].update({name: safe_state.file_sha256(folder / name)}))
        with pytest.raises(FittedFileError) as err:
            reload(world, kind, folder)
        assert str(folder / name) in str(err.value) and "delete the folder" in str(err.value)
        assert not marker.exists()


@pytest.mark.parametrize("with_new_files", [False, True], ids=["old-folder", "beside-new-files"])
def test_an_old_fitted_pt_is_refused_unread(with_new_files, world, fits, tmp_path):
    lm, tasks = world
    payload, marker = crafted_pickle(tmp_path)
    method = FACTORIES["static"]()
    if with_new_files:
        folder = copy_of(fits, "static", tmp_path)
    else:  # what the earlier version wrote: fitted.pt (torch.save, a pickle) and a record without a version
        folder = tmp_path / "old"
        folder.mkdir()
        (folder / "fitted.json").write_text(json.dumps({"format": "workbench-fitted-method", "fit_seconds": 1.0,
                                                        **fit_key(method, lm, [t.name for t in tasks[:2]])}))
    (folder / "fitted.pt").write_bytes(payload)
    with pytest.raises(FittedFileError, match="earlier workbench version.*pickle.*not loaded.*delete the folder") as e:
        fit_or_load(method, lm, tasks[:2], folder)
    assert str(folder) in str(e.value)
    assert not marker.exists()
    (folder / "fitted.json").unlink()  # a fitted.pt without a record (an old save cut short): refused, not refitted
    with pytest.raises(FittedFileError, match="earlier workbench version"):
        fit_or_load(method, lm, tasks[:2], folder)
    assert not marker.exists() and (folder / "fitted.safetensors").exists() == with_new_files


# ------------------------------------------------------------------------------------------ damaged folders
@pytest.mark.parametrize("kind", ["static", "lora"])
@pytest.mark.parametrize("record_updated", [False, True], ids=["stale-hash", "hash-forged"])
def test_a_truncated_safetensors_names_the_file(kind, record_updated, world, fits, tmp_path):
    for path in data_files(fits[kind][1]):
        name = path.relative_to(fits[kind][1]).as_posix()
        folder = copy_of(fits, kind, tmp_path / name.replace("/", "_"))
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
        if record_updated:
            rewrite_record(folder, lambda r: r["files"].update({name: safe_state.file_sha256(folder / name)}))
        fault = "not a complete safetensors file" if record_updated else "changed since the fit was saved"
        with pytest.raises(FittedFileError, match=fault) as err:
            reload(world, kind, folder)
        assert str(folder / name) in str(err.value) and "delete the folder" in str(err.value)


def truncate_record(folder):
    text = (folder / "fitted.json").read_text()
    (folder / "fitted.json").write_text(text[: len(text) // 2])


def break_a_tensor_reference(folder):
    def walk(node):
        if isinstance(node, dict):
            if "$tensor" in node:
                node["$tensor"] = "no such tensor"
                return True
            return any(walk(v) for v in node.values())
        return isinstance(node, list) and any(walk(v) for v in node)

    rewrite_record(folder, lambda r: walk(r["attributes"]) or pytest.fail("no tensor reference"))


@pytest.mark.parametrize("edit, fault", [
    (truncate_record, "not valid JSON"),
    (break_a_tensor_reference, "not a state the workbench wrote"),
    (lambda f: rewrite_record(f, lambda r: r["attributes"].pop("threshold")), "holds the attributes"),
    (lambda f: rewrite_record(f, lambda r: r["files"].update({"../x.safetensors": "0" * 64})), "outside the folder"),
    (lambda f: rewrite_record(f, lambda r: r.pop("files")), "incomplete record"),
], ids=["truncated", "tensor-reference", "missing-attribute", "path-outside", "no-hashes"])
def test_an_edited_record_names_the_file(edit, fault, world, fits, tmp_path):
    folder = copy_of(fits, "elicit", tmp_path)
    edit(folder)
    with pytest.raises(FittedFileError, match=fault) as err:
        reload(world, "elicit", folder)
    assert str(folder / "fitted.json") in str(err.value) and "delete the folder" in str(err.value)


def test_a_fit_saved_again_drops_its_record_first(world, fits, tmp_path, monkeypatch):
    """The record is written last and removed first: a save cut short leaves a folder that is refitted."""
    lm, tasks = world
    method, _ = fits["static"]
    folder = copy_of(fits, "static", tmp_path)
    key = fit_key(method, lm, [t.name for t in tasks[:2]])
    seen, real = [], safe_state.file_sha256
    monkeypatch.setattr(safe_state, "file_sha256", lambda p: seen.append((folder / "fitted.json").exists()) or real(p))
    save_fitted(method, folder, key, 2.0)  # hashes are taken once the data files are written, before the record
    assert seen == [False]
    assert load_fitted(FACTORIES["static"](), folder, key) == 2.0


def test_compare_with_a_fit_dir_holding_a_pickle_refuses_it_unread(world, tmp_path):
    """The path a study takes (compare(fit_dir=...), notebook 02): a planted fitted.pt is refused, never run."""
    from workbench.eval.compare import compare

    lm, tasks = world
    payload, marker = crafted_pickle(tmp_path)
    kwargs = dict(fit_dir=tmp_path / "fitted", n_test=2, templates=[0], prefixes=["A:"], progress=False)
    compare(lm, [StaticTaskVector(k=2, n_prompts=2)], tasks[:2], tasks[:1], **kwargs)
    (folder,) = [p.parent for p in (tmp_path / "fitted").glob("*/fitted.json")]
    (folder / "fitted.pt").write_bytes(payload)
    with pytest.raises(FittedFileError, match=f"{re.escape(str(folder))}.*earlier workbench version"):
        compare(lm, [StaticTaskVector(k=2, n_prompts=2)], tasks[:2], tasks[:1], **kwargs)
    assert not marker.exists()
