"""llama.cpp itself steers the block a workbench control-vector GGUF names (issue 22 §2).

A round trip through our own GGUF writer and reader can agree with itself and still be wrong about which block
llama.cpp steers. So the file goes to the real consumer: llama-cpp-python (0.3.36, ``make llama-cpp``) on the
embedded ``SmolLM2-135M-Instruct.Q4_1.gguf``, the file the workbench dequantizes. The file is read the way
llama.cpp's loader reads it (``common/common.cpp``, ``common_control_vector_load_one``: tensor ``direction.N`` goes
to ``data[(N - 1) * n_embd ...]``, N = 0 is refused) and that buffer is handed to
``llama_cpp.llama_set_adapter_cvec``, which adds ``data[(il - 1) * n_embd ...]`` to the output of decoder block
``il`` (``src/llama-adapter.cpp``; ``build_cvec`` after the block's residual add) at every position.

Same token ids on both sides, raw prompts, next-token logits. A vector on ONE block at a time (3x that block's
typical token norm, so the shift stands out of the Q4/Q8 rounding noise): llama.cpp's steered-minus-unsteered
logit shift must match the workbench's ``positions="all"`` shift in correlation AND relative error, and the same
vector one block late or early must fail those thresholds (the test tells an off-by-one apart). The file is
written by ``wb.save_vectors(..., format="gguf")`` and read here independently of ``wb.load_vectors``. Skipped
with the reason when llama_cpp does not import or the embedded GGUF is missing (a failure under
``ATV_REQUIRE_LLAMA_CPP=1``, as in CI).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

import workbench as wb
from workbench.core.inference import encode, tokenize
from workbench.core.models import EMBEDDED_MODELS, package_dir

pytestmark = pytest.mark.embedded


def unavailable(reason: str) -> None:
    """Skip the module with `reason`, or fail it when ``ATV_REQUIRE_LLAMA_CPP=1`` (CI, see .ci/run)."""
    if os.environ.get("ATV_REQUIRE_LLAMA_CPP") == "1":
        pytest.fail(f"ATV_REQUIRE_LLAMA_CPP=1 but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    import llama_cpp
except Exception as err:  # ImportError, or the shared library failing to load (RuntimeError / OSError)
    llama_cpp, IMPORT_ERROR = None, f"{type(err).__name__}: {err}"
if llama_cpp is None:
    unavailable(f"llama-cpp-python does not import ({IMPORT_ERROR}); `make llama-cpp` or "
                "pip install 'atv-workbench[llama]' installs it")


def _embedded_gguf() -> Path:
    package, filename = EMBEDDED_MODELS["smollm2-135m"]
    try:
        path = package_dir(package) / filename
    except FileNotFoundError as err:
        unavailable(f"embedded GGUF missing: {err}")
    if not path.is_file():
        unavailable(f"embedded GGUF missing: {path} does not exist")
    return path


GGUF = _embedded_gguf()
PROMPTS = ["The capital of France is", "The opposite of hot is", "Q: What is 12 plus 7?\nA:"]
BLOCKS = [3, 12, 24]
#: vector norm / the block's mean output norm over the prompts' tokens after the first (the first token is the
#: attention sink, 7-150x the others). Smaller vectors drown in the Q4/Q8 rounding noise (rel err up to 0.25 at
#: 0.5x), much larger ones swamp the block so that one block off agrees too (one late: rel 0.12 at 5x on block 24).
NORM_MULTIPLE = 3.0
#: A placement passes when every prompt does. Measured at 3x (worst prompt): right numbering corr >= 0.9992,
#: rel <= 0.043; one block late or early corr <= 0.985, rel >= 0.19.
MIN_CORR, MAX_REL = 0.995, 0.1


# --------------------------------------------------------------------------------------------- the file
def read_like_llama_cpp(path: Path, strength: float = 1.0) -> tuple[np.ndarray, int]:
    """(data, n_embd) as llama.cpp's ``common_control_vector_load_one`` builds them from `path`: ``direction.N``
    (N >= 1) scaled by `strength` and summed into ``data[(N - 1) * n_embd : N * n_embd]`` (layer 1 at [0]). A name
    that is not ``direction.<int>``, N = 0, a non-F32 or non-1-D tensor or mixed sizes are refused, as there
    (llama.cpp reads no metadata key, not even the architecture)."""
    reader = gguf.GGUFReader(str(path))
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
    does by default), or cleared when `data` is None.

    `data` is zero-padded (or cut) to the ``(n_layer - 1) * n_embd`` floats of blocks 1..n_layer-1: llama.cpp
    writes only the blocks `data` reaches, so on a reused context a shorter buffer would leave the previous
    call's vectors on the later blocks (a fresh context, as in ``llama-cli``, starts from zeros)."""
    n_layer = llama_cpp.llama_model_n_layer(llm.model)
    if data is None:
        rc = llama_cpp.llama_set_adapter_cvec(llm.ctx, None, 0, n_embd, -1, -1)
    else:
        full = np.zeros((n_layer - 1) * n_embd, dtype=np.float32)
        full[:min(data.size, full.size)] = data[:full.size]
        data = full
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
    """Token ids, unsteered logits of both, and per block the mean output norm over the tokens after the first."""
    seqs = tokenize(smollm, PROMPTS)
    enc = encode(smollm, PROMPTS)
    with torch.no_grad():
        out = smollm.hf(**enc, output_hidden_states=True)
    mask = enc["attention_mask"].bool()
    mask[torch.arange(len(PROMPTS)), mask.int().argmax(-1)] = False  # each row's first real token (left padding)
    # hidden_states[i + 1] is block i's output for i < L - 1 (the last entry is after the final norm)
    norms = torch.stack([h[mask].norm(dim=-1).mean() for h in out.hidden_states[1:-1]])
    return {"seqs": seqs, "wb": wb.next_token_logits(smollm, PROMPTS),
            "llama": llama_logits(llama, seqs, None, smollm.hidden_size), "norms": norms}


def block_vector(smollm, block: int, norm: float) -> torch.Tensor:
    """[L, d] zeros except a fixed random direction of norm `norm` at `block`."""
    g = torch.Generator().manual_seed(1000 + block)
    v = torch.randn(smollm.hidden_size, generator=g)
    vectors = torch.zeros(smollm.num_layers, smollm.hidden_size)
    vectors[block] = v / v.norm() * norm
    return vectors


def worst_correlation(got: torch.Tensor, want: torch.Tensor) -> float:
    """The lowest per-prompt Pearson correlation of two [B, V] logit tensors."""
    return min(float(torch.corrcoef(torch.stack([g, w]))[0, 1]) for g, w in zip(got, want))


def agreement(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(worst per-prompt correlation, worst per-prompt ||got - want|| / ||want||) of two [B, V] logit shifts."""
    return worst_correlation(got, want), float(((got - want).norm(dim=-1) / want.norm(dim=-1)).max())


def test_unsteered_llama_cpp_matches_the_workbench(clean):
    assert clean["llama"].shape == clean["wb"].shape
    corr = worst_correlation(clean["llama"], clean["wb"])
    assert corr > 0.998, f"unsteered llama.cpp vs workbench float32: correlation {corr:.4f}"
    assert torch.equal(clean["llama"].argmax(-1), clean["wb"].argmax(-1))


@pytest.mark.parametrize("block", BLOCKS)
def test_llama_cpp_steers_the_block_the_gguf_names(block, llama, smollm, clean, tmp_path):
    vectors = block_vector(smollm, block, NORM_MULTIPLE * float(clean["norms"][block]))
    saved = wb.save_vectors(vectors, tmp_path / "vector.gguf", format="gguf", lm=smollm)
    assert saved.usage.endswith(f"--control-vector-scaled {saved.path}:1.0") and not saved.warnings
    data, n_embd = read_like_llama_cpp(saved.path)
    assert n_embd == smollm.hidden_size
    assert gguf.GGUFReader(str(saved.path)).get_field("general.architecture").contents() == "controlvector"
    want = wb.next_token_logits(smollm, PROMPTS, wb.Injection(vectors, scale=1.0, positions="all")) - clean["wb"]

    def shift(data: np.ndarray) -> torch.Tensor:
        return llama_logits(llama, clean["seqs"], data, n_embd) - clean["llama"]

    corr, rel = agreement(shift(data), want)
    late = np.concatenate([np.zeros(n_embd, dtype=np.float32), data])  # direction.N read as N + 1
    early = data[n_embd:]                                                # direction.N read as N - 1
    off = {name: agreement(shift(d), want) for name, d in (("late", late), ("early", early))}
    print(f"block {block}: right corr {corr:.4f} rel {rel:.3f}; " +
          "; ".join(f"one {k} corr {c:.4f} rel {r:.3f}" for k, (c, r) in off.items()))
    assert corr > MIN_CORR and rel < MAX_REL, f"block {block}: llama.cpp vs workbench corr {corr:.4f} rel {rel:.3f}"
    for name, (c, r) in off.items():  # the test tells an off-by-one apart
        assert not (c > MIN_CORR and r < MAX_REL), f"block {block} read one {name} passes: corr {c:.4f} rel {r:.3f}"


def test_control_vector_scaled_by_lambda_is_the_workbench_injection_at_lambda(llama, smollm, clean, tmp_path):
    """An exported ``wb.Injection(v, scale=λ, positions="all")`` holds v and says λ: llama.cpp's loader at strength
    λ (``--control-vector-scaled FILE:λ``) steers like the Injection; so does strength 1 on a file saved with
    ``scale=λ`` (λ folded in)."""
    block, lam = 12, 2.0
    vectors = block_vector(smollm, block, NORM_MULTIPLE / lam * float(clean["norms"][block]))
    injection = wb.Injection(vectors, scale=lam, positions="all")
    want = wb.next_token_logits(smollm, PROMPTS, injection) - clean["wb"]
    as_given = wb.save_vectors(injection, tmp_path / "given.gguf", lm=smollm)
    folded = wb.save_vectors(vectors, tmp_path / "folded.gguf", lm=smollm, scale=lam)
    assert (as_given.scale, folded.scale) == (lam, 1.0)
    assert as_given.usage.endswith(f"--control-vector-scaled {as_given.path}:{lam!r}")
    for saved in (as_given, folded):
        data, n_embd = read_like_llama_cpp(saved.path, strength=saved.scale)
        corr, rel = agreement(llama_logits(llama, clean["seqs"], data, n_embd) - clean["llama"], want)
        assert corr > MIN_CORR and rel < MAX_REL, f"{saved.path.name} at {saved.scale}: corr {corr:.4f} rel {rel:.3f}"
