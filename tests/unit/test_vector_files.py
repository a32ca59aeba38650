"""wb.save_vectors / wb.load_vectors (safetensors, llama.cpp GGUF, lm-eval) and the StaticVectors baseline, on a
tiny Llama: the GGUF layer numbering, exact round trips, foreign files (repeng), and errors naming the value."""

from __future__ import annotations

import warnings

import gguf
import numpy as np
import pytest
import torch
from test_static_tv import single_thread, texts_for, toy_lm, toy_tasks  # noqa: F401 (autouse fixture)

import workbench as wb
import workbench.eval.evaluate as ev
from workbench.core.files import FileFormatError
from workbench.core.fingerprints import FingerprintMismatch
from workbench.core.inference import next_token_logits
from workbench.core.testing import tiny_model
from workbench.methods import StaticVectors


@pytest.fixture(scope="module")
def setup():
    tasks = toy_tasks()
    return toy_lm("llama", tasks), tasks


def distinct(lm) -> torch.Tensor:
    """[L, d] vectors whose layer l is recognisable: every entry of row l is l + 1, plus a little noise."""
    L, d = lm.num_layers, lm.hidden_size
    torch.manual_seed(1)
    return torch.arange(1, L + 1, dtype=torch.float32)[:, None].expand(L, d) + 0.01 * torch.randn(L, d)


def logits_of(lm, method, task, texts):
    batch = method.prepare(lm, task, task.test, texts)  # what wb.evaluate runs: prepare, then the forward pass
    return next_token_logits(lm, batch.prompts, batch.intervention)


def repeng_gguf(path, directions: dict[int, np.ndarray], arch: str = "controlvector", hint: str = "llama") -> None:
    """A control vector written the way repeng's ControlVector.export_gguf writes one."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string(f"{arch}.model_hint", hint)
    writer.add_uint32(f"{arch}.layer_count", len(directions))
    for layer, v in directions.items():
        writer.add_tensor(f"direction.{layer}", v)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ------------------------------------------------------------------------------------------ GGUF layer numbering
def test_gguf_direction_n_is_workbench_layer_n_as_llama_cpp_loads_it(setup, tmp_path):
    """direction.N holds v_N (added at the output of block N); layer 0 is dropped with its norm reported. Replaying
    llama.cpp's loader (data[(N-1)*d] <- direction.N) and apply (tensors[il] <- data[(il-1)*d], il = 1..L-1) puts
    v_il on block il's output, the workbench's layer il."""
    lm, _ = setup
    v = distinct(lm)
    with pytest.warns(UserWarning, match=r"layer 0 carries a vector of norm [0-9.]+, dropped"):
        saved = wb.save_vectors(wb.Injection(v, scale=0.5, positions="all"), tmp_path / "v.gguf", lm=lm)
    assert saved.layers == [1, 2, 3] and saved.scale == 0.5 and len(saved.warnings) == 1
    assert f"{float(v[0].norm()):.6g}" in saved.warnings[0]
    assert saved.usage.endswith(f"--control-vector-scaled {tmp_path / 'v.gguf'}:0.5")
    reader = gguf.GGUFReader(str(tmp_path / "v.gguf"))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 3
    files = {t.name: np.array(t.data) for t in reader.tensors}
    assert sorted(files) == ["direction.1", "direction.2", "direction.3"]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1 for t in reader.tensors)
    d = lm.hidden_size
    data = np.zeros(d * 3, dtype=np.float32)  # common_control_vector_load_one
    for name, values in files.items():
        n = int(name.split(".")[1])
        data[d * (n - 1): d * n] += values
    for il in range(1, lm.num_layers):  # llama_adapter_cvec::apply; build_cvec(cur, il) on block il's output
        np.testing.assert_array_equal(data[d * (il - 1): d * il], v[il].numpy())


def test_gguf_round_trip_gives_the_same_logits(setup, tmp_path):
    lm, tasks = setup
    v = distinct(lm) * 0.05
    original = wb.Injection(v, scale=0.7, layers=[1, 3], positions="all")
    saved = wb.save_vectors(original, tmp_path / "v.gguf", lm=lm)
    assert saved.warnings == () and saved.layers == [1, 3]
    method = StaticVectors(tmp_path / "v.gguf")
    assert (method.scale, method.layers, method.positions) == (0.7, [1, 3], "all")
    texts = texts_for(tasks[0])
    expected = next_token_logits(lm, [lm.render(t) for t in texts], original)
    torch.testing.assert_close(logits_of(lm, method, tasks[0], texts), expected, rtol=0, atol=1e-6)
    assert not torch.allclose(expected, next_token_logits(lm, [lm.render(t) for t in texts]))
    vectors, meta = wb.load_vectors(tmp_path / "v.gguf")
    assert vectors.shape == (4, lm.hidden_size) and not vectors[[0, 2]].any()
    assert meta["model"]["fingerprint"] == lm.fingerprint and meta["positions"] == "all"


def test_scale_is_folded_in_only_when_passed(setup, tmp_path):
    lm, _ = setup
    v = distinct(lm)
    wb.save_vectors(wb.Injection(v, scale=0.25, layers=[1, 2, 3], positions="all"), tmp_path / "as_given.gguf", lm=lm)
    wb.save_vectors(v, tmp_path / "folded.gguf", lm=lm, scale=0.25, layers=[1, 2, 3], positions="all")
    given, meta = wb.load_vectors(tmp_path / "as_given.gguf")
    folded, meta2 = wb.load_vectors(tmp_path / "folded.gguf")
    torch.testing.assert_close(given[1:], v[1:], rtol=0, atol=0)
    torch.testing.assert_close(folded[1:], 0.25 * v[1:], rtol=0, atol=0)
    assert (meta["scale"], meta2["scale"], meta2["folded_scale"]) == (0.25, 1.0, 0.25)
    with pytest.raises(ValueError, match="applied with scale 0.25"):
        wb.save_vectors(wb.Injection(v, scale=0.25), tmp_path / "x.gguf", lm=lm, scale=2.0)


def test_last_token_vectors_exported_for_every_position_warn(setup, tmp_path):
    lm, _ = setup
    injection = wb.Injection(distinct(lm), scale=1.0, layers=[2], positions="last")
    for name in ("v.gguf", "v.pt"):
        with pytest.warns(UserWarning, match="made for positions='last'.*adds them at every position"):
            saved = wb.save_vectors(injection, tmp_path / name, lm=lm)
        assert any("positions='last'" in w for w in saved.warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wb.save_vectors(injection, tmp_path / "v.safetensors", lm=lm).warnings == ()


# ------------------------------------------------------------------------------------------------ safetensors
def test_safetensors_round_trip_keeps_everything(setup, tmp_path):
    lm, tasks = setup
    original = wb.Injection(distinct(lm) * 0.05, scale=0.3, layers=[0, 2], positions="last")
    saved = wb.save_vectors(original, tmp_path / "v.safetensors", lm=lm, method="mine", tasks=["toy_sentiment"])
    vectors, meta = wb.load_vectors(tmp_path / "v.safetensors")
    torch.testing.assert_close(vectors, original.vectors, rtol=0, atol=0)
    assert (meta["scale"], meta["layers"], meta["positions"], meta["num_layers"], meta["hidden_size"]) == (
        0.3, [0, 2], "last", 4, 32)
    assert meta["model"]["fingerprint"] == lm.fingerprint and meta["model"]["name"] == lm.name
    assert meta["method"] == "mine" and meta["tasks"] == ["toy_sentiment"] and meta["package_versions"]["torch"]
    assert saved.usage == f"wb.methods.StaticVectors({str(tmp_path / 'v.safetensors')!r})"
    texts = texts_for(tasks[0])
    expected = next_token_logits(lm, [lm.render(t) for t in texts], original)
    torch.testing.assert_close(logits_of(lm, StaticVectors(tmp_path / "v.safetensors"), tasks[0], texts), expected,
                               rtol=0, atol=1e-6)


def test_per_query_vectors_round_trip_by_query_text(setup, tmp_path):
    lm, tasks = setup
    texts = texts_for(tasks[0])
    torch.manual_seed(2)
    per_query = wb.SteeringVectors(0.1 * torch.randn(len(texts), 4, 32), 0.5, "all", "last", {"queries": texts})
    wb.save_vectors(per_query, tmp_path / "q.safetensors", lm=lm)
    vectors, meta = wb.load_vectors(tmp_path / "q.safetensors")
    assert vectors.shape == (len(texts), 4, 32) and meta["queries"] == texts
    method = StaticVectors(tmp_path / "q.safetensors")
    expected = next_token_logits(lm, [lm.render(t) for t in texts[::-1]],
                                 wb.Injection(per_query.vectors.flip(0), 0.5, "all", "last"))
    batch = method.prepare(lm, tasks[0], tasks[0].test[::-1], texts[::-1])
    torch.testing.assert_close(next_token_logits(lm, batch.prompts, batch.intervention), expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no vector for the query 'unknown'"):
        method.prepare(lm, tasks[0], tasks[0].test[:1], ["unknown"])
    with pytest.raises(ValueError, match=r"one per query \(\[n, L, d\]\): only format 'safetensors'"):
        wb.save_vectors(per_query, tmp_path / "q.gguf", lm=lm)


# ---------------------------------------------------------------------------------------------------- lm-eval
def test_lm_eval_file_is_what_hf_steered_reads_and_adds_everywhere(setup, tmp_path):
    """The .pt loads with torch.load(weights_only=True); its hookpoints are modules of model.base_model (where
    lm-eval's steer() hooks them); lm-eval's hook (acts + coefficient * vector) gives the workbench's
    positions='all' injection."""
    lm, tasks = setup
    v = distinct(lm) * 0.05
    wb.save_vectors(wb.Injection(v, scale=0.4, layers=[1, 2], positions="all"), tmp_path / "v.pt", lm=lm)
    config = torch.load(tmp_path / "v.pt", weights_only=True)
    assert list(config) == ["layers.1", "layers.2"]
    modules = dict(lm.hf.base_model.named_modules())
    for layer, (hookpoint, entry) in zip((1, 2), config.items()):
        assert modules[hookpoint] is lm.layers[layer]
        assert (entry["action"], entry["bias"], entry["head_index"], entry["steering_coefficient"]) == (
            "add", None, None, 0.4)
        torch.testing.assert_close(entry["steering_vector"], v[layer], rtol=0, atol=0)

    def hook(entry):
        def add(module, inputs, output):
            if isinstance(output, tuple):
                return (output[0] + entry["steering_coefficient"] * entry["steering_vector"], *output[1:])
            return output + entry["steering_coefficient"] * entry["steering_vector"]
        return add

    prompt = [lm.render(texts_for(tasks[0])[0])]  # one prompt: no padding
    handles = [modules[h].register_forward_hook(hook(e)) for h, e in config.items()]
    try:
        with torch.no_grad():
            ids = lm.tokenizer(prompt, return_tensors="pt")
            theirs = lm.hf(**ids).logits[:, -1]
    finally:
        for handle in handles:
            handle.remove()
    ours = next_token_logits(lm, prompt, wb.Injection(v, 0.4, [1, 2], "all"))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    method = StaticVectors(tmp_path / "v.pt")
    assert (method.scale, method.layers, method.positions) == (0.4, [1, 2], "all")
    torch.testing.assert_close(logits_of(lm, method, tasks[0], texts_for(tasks[0])),
                               next_token_logits(lm, [lm.render(t) for t in texts_for(tasks[0])],
                                                 wb.Injection(v, 0.4, [1, 2], "all")), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="format 'lm-eval' needs lm="):
        wb.save_vectors(v, tmp_path / "w.pt")


@pytest.mark.parametrize("arch, expected", [("gpt2", "h.{}"), ("gpt_neox", "layers.{}"), ("qwen2", "layers.{}")])
def test_lm_eval_hookpoints_are_module_names_under_the_base_model(arch, expected):
    from workbench.core.vector_files import hookpoints_of

    lm = tiny_model(arch, texts=["hello world"])
    names = hookpoints_of(lm)
    assert names == [expected.format(i) for i in range(lm.num_layers)]
    modules = dict(lm.hf.base_model.named_modules())
    assert all(modules[n] is block for n, block in zip(names, lm.layers))


# ------------------------------------------------------------------------------------ a vector made elsewhere
def test_repeng_gguf_is_a_baseline_like_the_others(setup, tmp_path):
    """A control vector written by the gguf package as repeng does is evaluated by wb.evaluate, evaluate_many and
    the paired test on the same items as zero-shot."""
    lm, tasks = setup
    torch.manual_seed(3)
    directions = {layer: (0.5 * torch.randn(lm.hidden_size)).numpy() for layer in (1, 2, 3)}
    repeng_gguf(tmp_path / "repeng.gguf", directions)
    method = StaticVectors(tmp_path / "repeng.gguf", scale=2.0)
    assert (method.layers, method.positions, method.metadata["model_hint"]) == ([1, 2, 3], "all", "llama")
    v = torch.zeros(lm.num_layers, lm.hidden_size)
    for layer, values in directions.items():
        v[layer] = torch.from_numpy(values)
    texts = texts_for(tasks[0])
    torch.testing.assert_close(logits_of(lm, method, tasks[0], texts),
                               next_token_logits(lm, [lm.render(t) for t in texts], wb.Injection(v, 2.0, "all", "all")),
                               rtol=0, atol=1e-6)
    kw = dict(n_test=3, templates=[0], prefixes=["A:"], progress=False)
    alone = ev.evaluate(lm, method, tasks[:1], run_dir=tmp_path / "run", **kw)
    again = ev.evaluate(lm, StaticVectors(tmp_path / "repeng.gguf", scale=2.0), tasks[:1], run_dir=tmp_path / "run",
                        **kw)  # resumed: the same file, scale, layers and positions
    assert again["prediction"].tolist() == alone["prediction"].tolist()
    both = ev.evaluate_many(lm, {"zero-shot": wb.methods.ZeroShot(), "repeng": method}, tasks[:1], **kw)
    assert set(alone["method"]) == {"static-vectors"} and len(alone) == 3
    assert alone["prediction"].tolist() == both["repeng"]["prediction"].tolist()
    import pandas as pd

    table = wb.paired(pd.concat(both.values()), baseline="zero-shot", n_boot=50, n_perm=50)
    assert "static-vectors" in set(table["method"])
    assert wb.methods.display_label(method) == "static vectors" and method.config()["format"] == "gguf"


def test_exported_static_tv_evaluates_like_static_tv(setup, tmp_path):
    lm, tasks = setup
    static = wb.methods.StaticTaskVector(k=3, n_prompts=2, scale=0.5, layers=[1, 2]).fit(lm, tasks[:1])
    exported = wb.methods.exports.static_task_vector(static, "toy_sentiment")
    wb.save_vectors(exported, tmp_path / "tv.safetensors", lm=lm)
    method = StaticVectors(tmp_path / "tv.safetensors")
    assert method.metadata["method"] == "static-tv" and method.metadata["tasks"] == ["toy_sentiment"]
    texts = texts_for(tasks[0])
    torch.testing.assert_close(logits_of(lm, method, tasks[0], texts), logits_of(lm, static, tasks[0], texts),
                               rtol=0, atol=1e-6)
    kw = dict(n_test=4, templates=[0, 1], prefixes=["A:"], progress=False)
    ours, theirs = ev.evaluate(lm, method, tasks[:1], **kw), ev.evaluate(lm, static, tasks[:1], **kw)
    assert ours["prediction"].tolist() == theirs["prediction"].tolist()


def test_elicit_and_atv_exports(setup, tmp_path):
    lm, tasks = setup
    elicit = wb.methods.ELICIT(k=2, n_prompts=2, n_valid=2, top_k=2, layer_stride=2).fit(lm, tasks[:1])
    entry = wb.methods.exports.elicit_entry(elicit, 1)
    layer = elicit.best_layers["toy_sentiment"]
    assert entry.layers == [layer] and entry.scale == elicit.strength and entry.positions == "last"
    torch.testing.assert_close(entry.vectors[layer], elicit.library[1][layer], rtol=0, atol=0)
    assert not entry.vectors[[l for l in range(4) if l != layer]].any()
    wb.save_vectors(entry, tmp_path / "entry.safetensors", lm=lm)
    assert wb.load_vectors(tmp_path / "entry.safetensors")[1]["entry"] == 1
    generator = wb.ATVGenerator(wb.load_encoder("scratch:1x32", tokenizer=lm.tokenizer, seed=0), lm)
    atv = wb.methods.ATV(generator, scale=0.5)
    mean = wb.methods.exports.atv_task_vector(atv, tasks[0], n=3)
    assert mean.vectors.shape == (4, 32) and mean.metadata["n_queries"] == 3 and mean.metadata["tasks"] == [
        "toy_sentiment"]
    queries = wb.methods.exports.atv_query_vectors(atv, texts_for(tasks[0])[:2], tasks=["toy_sentiment"])
    saved = wb.save_vectors(queries, tmp_path / "q.safetensors", lm=lm)
    loaded = StaticVectors(saved.path)
    assert loaded.vectors.shape == (2, 4, 32) and loaded.positions == atv.positions and loaded.scale == 0.5


# ------------------------------------------------------------------------------------------------------ errors
def test_files_for_another_model_are_refused_naming_the_value(setup, tmp_path):
    lm, tasks = setup
    repeng_gguf(tmp_path / "wide.gguf", {1: np.ones(16, dtype=np.float32)})
    with pytest.raises(ValueError, match="wide.gguf: vectors of hidden size 16, but .* has hidden size 32"):
        StaticVectors(tmp_path / "wide.gguf").fit(lm)
    repeng_gguf(tmp_path / "deep.gguf", {7: np.ones(32, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"deep.gguf: steers direction.7, beyond .* decoder blocks 0..3"):
        StaticVectors(tmp_path / "deep.gguf").prepare(lm, tasks[0], tasks[0].test[:1], texts_for(tasks[0])[:1])
    wb.save_vectors(torch.ones(3, 32), tmp_path / "three.safetensors")
    with pytest.raises(ValueError, match="three.safetensors: made for a model with 3 layers, but .* has 4"):
        StaticVectors(tmp_path / "three.safetensors").fit(lm)
    other = tiny_model("llama", texts=["hello world"], seed=5)
    wb.save_vectors(distinct(lm), tmp_path / "other.safetensors", lm=other)
    with pytest.raises(FingerprintMismatch, match="other.safetensors: vectors made on another model"):
        StaticVectors(tmp_path / "other.safetensors").fit(lm)
    with pytest.raises(ValueError, match=r"vectors have shape \(3, 32\), but .* has \[L, d\] = \[4, 32\]"):
        wb.save_vectors(torch.ones(3, 32), tmp_path / "x.gguf", lm=lm)


def test_unknown_formats_and_bad_ggufs_are_refused(setup, tmp_path):
    lm, _ = setup
    with pytest.raises(ValueError, match=r"unknown vector file format: format 'onnx'; use one of"):
        wb.save_vectors(distinct(lm), tmp_path / "v.bin", format="onnx")
    with pytest.raises(ValueError, match=r"unknown vector file format: the suffix of .*v.npy"):
        wb.load_vectors(tmp_path / "v.npy")
    writer = gguf.GGUFWriter(str(tmp_path / "half.gguf"), "controlvector")
    writer.add_tensor("direction.1", np.ones(32, dtype=np.float16))
    writer.write_header_to_file(), writer.write_kv_data_to_file(), writer.write_tensors_to_file(), writer.close()
    with pytest.raises(FileFormatError, match="half.gguf: tensor direction.1 is F16, expected F32"):
        StaticVectors(tmp_path / "half.gguf")
    repeng_gguf(tmp_path / "model.gguf", {1: np.ones(32, dtype=np.float32)}, arch="llama")
    with pytest.raises(FileFormatError, match="model.gguf: not a llama.cpp control vector: general.architecture "
                                              "is 'llama'"):
        wb.load_vectors(tmp_path / "model.gguf")
    repeng_gguf(tmp_path / "zero.gguf", {0: np.ones(32, dtype=np.float32)})
    with pytest.raises(FileFormatError, match="zero.gguf: tensor direction.0: llama.cpp refuses layer 0"):
        wb.load_vectors(tmp_path / "zero.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf")
    with pytest.raises(FileFormatError, match="text.gguf: not a readable GGUF file"):
        wb.load_vectors(tmp_path / "text.gguf")


def test_bad_metadata_writes_nothing(setup, tmp_path):
    lm, _ = setup
    with pytest.raises(TypeError, match="metadata 'note' is not JSON-able"):
        wb.save_vectors(distinct(lm), tmp_path / "v.safetensors", lm=lm, note=object())
    with pytest.raises(ValueError, match=r"metadata \['num_layers'\] is filled in by save_vectors"):
        wb.save_vectors(distinct(lm), tmp_path / "v.safetensors", lm=lm, num_layers=2)
    assert list(tmp_path.iterdir()) == []


def test_steering_vectors_of_a_preset_are_checked_against_the_model(setup):
    lm, tasks = setup
    method = StaticVectors(wb.SteeringVectors(distinct(lm), 0.1, "middle", "last"))
    assert method.layers == "middle" and method.fit(lm) is method
    batch = method.prepare(lm, tasks[0], tasks[0].test[:2], texts_for(tasks[0])[:2])
    assert batch.intervention.layers == "middle" and batch.intervention.positions == "last"


# ----------------------------------------------------------------------------------------- nothing unpickles
class Planted:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


@pytest.mark.parametrize("name", ["planted.pt", "planted.safetensors", "planted.gguf"])
def test_a_pickle_is_never_unpickled(tmp_path, name):
    marker = tmp_path / "marker"
    payload = {"layers.1": {"steering_vector": Planted(marker), "steering_coefficient": 1.0, "action": "add",
                            "bias": None, "head_index": None}}
    torch.save(payload, tmp_path / name)
    assert not marker.exists()
    with pytest.raises(FileFormatError, match=name):
        wb.load_vectors(tmp_path / name)
    with pytest.raises(FileFormatError, match=name):
        StaticVectors(tmp_path / name)
    assert not marker.exists()
