"""llama.cpp itself steers the block a workbench control-vector GGUF names (issue 22 §2).

A round trip through our own GGUF writer and reader can agree with itself and still be wrong about which block
llama.cpp steers. So the file goes to the real consumer: llama-cpp-python (0.3.36, ``make llama-cpp``) on the
embedded ``SmolLM2-135M-Instruct.Q4_1.gguf``, the file the workbench dequantizes. The file is read the way
llama.cpp's loader reads it (``common/common.cpp``, ``common_control_vector_load_one``: tensor ``direction.N`` goes
to ``data[(N - 1) * n_embd ...]``, N = 0 is refused) and that buffer is handed to
``llama_cpp.llama_set_adapter_cvec``, which adds ``data[(il - 1) * n_embd ...]`` to the output of decoder block
``il`` (``src/llama-adapter.cpp``; ``build_cvec`` after the block's residual add) at every position.

Same token ids on both sides, raw prompts, next-token logits. A vector on ONE block at a time (about 0.8x that
block's hidden-state norm, so the shift stands out of the Q4 rounding noise): llama.cpp's steered-minus-unsteered
logit shift must match the workbench's ``positions="all"`` shift in correlation AND relative error, and the same
vector one block late or early must fail those thresholds (the test can tell an off-by-one apart). Skipped with
the reason when llama_cpp does not import or the embedded GGUF is missing.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.inference import encode, tokenize
from workbench.core.models import EMBEDDED_MODELS, package_dir

pytestmark = pytest.mark.embedded

try:
    import llama_cpp
except Exception as err:  # ImportError, or the shared library failing to load (RuntimeError / OSError)
    pytest.skip(f"llama-cpp-python does not import ({type(err).__name__}: {err}); `make llama-cpp` or "
                "pip install 'atv-workbench[llama]' installs it", allow_module_level=True)


def _embedded_gguf() -> Path:
    package, filename = EMBEDDED_MODELS["smollm2-135m"]
    try:
        path = package_dir(package) / filename
    except FileNotFoundError as err:
        pytest.skip(f"embedded GGUF missing: {err}", allow_module_level=True)
    if not path.is_file():
        pytest.skip(f"embedded GGUF missing: {path} does not exist", allow_module_level=True)
    return path


GGUF = _embedded_gguf()
PROMPTS = ["The capital of France is",
           "Review: the movie was wonderful and moving. Sentiment:",
           "Q: What is 12 plus 7?\nA:"]
BLOCKS = [3, 12, 24]
NORM_FRACTION = 0.8   # vector norm / the block's mean hidden-state norm over the prompts' tokens
MIN_CORR, MAX_REL = 0.995, 0.1  # measured right numbering: corr >= 0.998, rel <= 0.06; one block off: rel >= 0.09


# --------------------------------------------------------------------------------------------- the file
def write_control_vector(vectors: torch.Tensor, path: Path) -> Path:
    """A llama.cpp control vector (architecture "controlvector", 1-D float32 ``direction.N`` for each non-zero
    block N >= 1 of `vectors` [L, d]); temporary stand-in for ``wb.save_vectors(..., format="gguf")``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "controlvector")
    writer.add_string("controlvector.model_hint", "llama")
    writer.add_uint32("controlvector.layer_count", vectors.shape[0])
    for n in range(1, vectors.shape[0]):
        if vectors[n].any():
            writer.add_tensor(f"direction.{n}", vectors[n].float().numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def save_gguf(vectors: torch.Tensor, path: Path) -> Path:
    """The vectors exported as a control-vector GGUF: ``wb.save_vectors`` once it exists, else the stand-in."""
    if hasattr(wb, "save_vectors"):
        wb.save_vectors(vectors, path, format="gguf")
        return path
    return write_control_vector(vectors, path)


def read_like_llama_cpp(path: Path, strength: float = 1.0) -> tuple[np.ndarray, int]:
    """(data, n_embd) as llama.cpp's ``common_control_vector_load_one`` builds them from `path`: ``direction.N``
    (N >= 1) scaled by `strength` and summed into ``data[(N - 1) * n_embd : N * n_embd]`` (layer 1 at [0]). A name
    that is not ``direction.<int>``, N = 0, a non-F32 or non-1-D tensor or mixed sizes are refused, as there."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != "controlvector":
        raise ValueError(f"{path}: general.architecture is {arch and arch.contents()!r}, not 'controlvector'")
    n_embd, data = -1, np.zeros(0, dtype=np.float32)
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise ValueError(f"{path}: tensor {tensor.name!r} is not direction.<layer> (llama.cpp refuses it)")
        n = int(index)
        if n == 0:
            raise ValueError(f"{path}: direction.0 present; llama.cpp refuses a zero layer index")
        if tensor.tensor_type != gguf.GGMLQuantizationType.F32 or len(tensor.shape) != 1:
            raise ValueError(f"{path}: {tensor.name} is {tensor.tensor_type.name} {list(tensor.shape)}; "
                             "llama.cpp needs 1-D F32")
        if n_embd not in (-1, int(tensor.n_elements)):
            raise ValueError(f"{path}: {tensor.name} has {tensor.n_elements} values, the others {n_embd}")
        n_embd = int(tensor.n_elements)
        if data.size < n_embd * n:
            data = np.concatenate([data, np.zeros(n_embd * n - data.size, dtype=np.float32)])
        data[n_embd * (n - 1): n_embd * n] += np.asarray(tensor.data, dtype=np.float32) * strength
    if n_embd == -1:
        raise ValueError(f"{path}: no direction tensors")
    return data, n_embd


# --------------------------------------------------------------------------------------------- llama.cpp
@pytest.fixture(scope="module")
def llama():
    model = llama_cpp.Llama(model_path=str(GGUF), n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
                            n_gpu_layers=0, seed=0, verbose=False)
    yield model
    model.close()


def set_control_vector(llm, data: np.ndarray | None, n_embd: int) -> None:
    """``llama_set_adapter_cvec`` on every block llama.cpp can steer (1..n_layer, as ``common_init_from_params``
    does by default), or cleared when `data` is None."""
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    if data is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
    else:
        data = np.ascontiguousarray(data, dtype=np.float32)
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, data.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                              data.size, n_embd, 1, n_layer)
    assert rc == 0, f"llama_set_adapter_cvec returned {rc}"


def llama_logits(llm, seqs: list[list[int]], data: np.ndarray | None, n_embd: int) -> torch.Tensor:
    """Next-token logits [B, V] of llama.cpp for the token ids `seqs`, steered by `data` (None: unsteered)."""
    set_control_vector(llm, data, n_embd)
    rows = []
    for ids in seqs:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[len(ids) - 1], dtype=np.float32))
    set_control_vector(llm, None, n_embd)
    return torch.from_numpy(np.stack(rows))


# --------------------------------------------------------------------------------------------- shared facts
@pytest.fixture(scope="module")
def clean(llama, smollm):
    """Token ids, unsteered logits of both, and each block's mean hidden-state norm (workbench, all tokens)."""
    seqs = tokenize(smollm, PROMPTS)
    enc = encode(smollm, PROMPTS)
    with torch.no_grad():
        out = smollm.hf(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].bool()
    norms = torch.stack([h[mask].norm(dim=-1).mean() for h in out.hidden_states[1:]])  # block outputs 0..L-1
    return {"seqs": seqs, "wb": wb.next_token_logits(smollm, PROMPTS),
            "llama": llama_logits(llama, seqs, None, smollm.hidden_size), "norms": norms}


def block_vector(smollm, block: int, norm: float) -> torch.Tensor:
    """[L, d] zeros except a fixed random direction of norm `norm` at `block`."""
    g = torch.Generator().manual_seed(1000 + block)
    v = torch.randn(smollm.hidden_size, generator=g)
    vectors = torch.zeros(smollm.num_layers, smollm.hidden_size)
    vectors[block] = v / v.norm() * norm
    return vectors


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(worst per-prompt correlation, worst per-prompt ||got - want|| / ||want||) of two [B, V] logit shifts."""
    corr = min(float(torch.corrcoef(torch.stack([g, w]))[0, 1]) for g, w in zip(got, want))
    rel = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())
    return corr, rel


def test_unsteered_llama_cpp_matches_the_workbench(clean):
    assert clean["llama"].shape == clean["wb"].shape
    corr = min(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) for a, b in zip(clean["llama"], clean["wb"]))
    assert corr > 0.998, f"unsteered llama.cpp vs workbench float32: correlation {corr:.4f}"
    assert torch.equal(clean["llama"].argmax(-1), clean["wb"].argmax(-1))


@pytest.mark.parametrize("block", BLOCKS)
def test_llama_cpp_steers_the_block_the_gguf_names(block, llama, smollm, clean, tmp_path):
    vectors = block_vector(smollm, block, NORM_FRACTION * float(clean["norms"][block]))
    data, n_embd = read_like_llama_cpp(save_gguf(vectors, tmp_path / "vector.gguf"))
    assert n_embd == smollm.hidden_size
    want = wb.next_token_logits(smollm, PROMPTS, wb.Injection(vectors, scale=1.0, positions="all")) - clean["wb"]

    def shift(data: np.ndarray) -> torch.Tensor:
        return llama_logits(llama, clean["seqs"], data, n_embd) - clean["llama"]

    corr, rel = agreement(shift(data), want)
    late = np.concatenate([np.zeros(n_embd, dtype=np.float32), data])  # direction.N read as N + 1
    early = data[n_embd:]                                                # direction.N read as N - 1
    off = {name: agreement(shift(d), want) for name, d in (("late", late), ("early", early))}
    print(f"block {block}: right corr {corr:.4f} rel {rel:.3f}; " +
          "; ".join(f"one {k} corr {c:.4f} rel {r:.3f}" for k, (c, r) in off.items()))
    assert corr > MIN_CORR and rel < MAX_REL, f"block {block}: llama.cpp vs workbench shift corr {corr:.4f}, rel {rel:.3f}"
    for name, (c, r) in off.items():
        assert not (c > MIN_CORR and r < MAX_REL), f"block {block} read one {name} still passes: corr {c:.4f} rel {r:.3f}"
