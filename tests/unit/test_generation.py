"""`wb.generate`: greedy output pinned to what it was before sampling existed, sampling reproducible from a seed,
top-k / top-p / temperature as specified, stop strings, steering the prompt only or every step, and per-token
log-probabilities equal to a plain forward pass."""

from __future__ import annotations

import pytest
import torch

import workbench as wb
from workbench.core.inference import encode
from workbench.core.testing import tiny_model

ARCHS = ["llama", "gpt2", "gpt_neox", "qwen2", "gemma2", "phi"]
TEXTS = ["the movie was great", "a sad and slow film", "hello world", "is this sentence positive or negative"]
PROMPTS = ["hello world", "the movie was great is this", "a sad film"]

# wb.generate's greedy continuations (6 new tokens) computed before sampling was added, on the tiny models below:
# plain; a shared [L, d] vector at λ=3 steering the prompt (first) or every step (all); per-prompt [n, L, d] vectors at
# every position and step in batches of 2; a shared vector at λ=0.3 at every position and step.
PINNED = {
    'llama': {
        'plain': ['question', 'question film question film question film', 'J world world world world world'],
        'first': ['movie the wrong the wrong', 'question film question film or', 'this world. sad'],
        'all': ['', '', ''],
        'per_all_b2': [
            'C C C C C C',
            'this this this this this this',
            'Neither Neither Neither Neither Neither Neither',
        ],
        'mild_all': ['! sad! sad! sad', 'sad! sad! sad!', '! sad! sad! sad'],
    },
    'gpt2': {
        'plain': ['slow No F was to', 'and Options positive wrong Options or', 'No F was to,'],
        'first': ['answer or! Yes', 'answer Options positive wrong Options or', 'answer The J a Answer this'],
        'all': [
            'answer answer answer answer answer answer',
            'answer answer answer answer answer answer',
            'answer answer answer answer answer answer',
        ],
        'per_all_b2': [
            'hello hello hello hello hello hello',
            'was was was was was was',
            'Options Options Options Options Options Options',
        ],
        'mild_all': [
            'answer answer answer answer answer answer',
            'is is is answer answer answer',
            'answer answer answer answer answer answer',
        ],
    },
    'gpt_neox': {
        'plain': ['film a film great film great', 'the Question sad Neither film a', '? great film great film?'],
        'first': [
            'the I Neither film a film',
            'the Question sad Neither film a',
            'the positive positive positive positive positive',
        ],
        'all': ['the the the the the the', 'the the the the the the', 'the the the the the the'],
        'per_all_b2': ['C C C C C C', ',,,,,,', 'E E E E E E'],
        'mild_all': ['is is the the the the', 'the the the the the the', 'the the the the the the'],
    },
    'qwen2': {
        'plain': [
            'wrong premise film film film film',
            'world Neither B world Neither B',
            'Answer and Answer or sentence G',
        ],
        'first': ['wrong J', 'wrong J world Neither context world', 'wrong J negative the G B'],
        'all': [
            'wrong wrong wrong wrong wrong wrong',
            'wrong wrong wrong wrong wrong wrong',
            'wrong wrong wrong wrong wrong wrong',
        ],
        'per_all_b2': [
            'answer answer answer answer answer answer',
            'question question question question question question',
            'I I I I I I',
        ],
        'mild_all': ['wrong is wrong is wrong is', 'is is is is is is', 'wrong is wrong is wrong is'],
    },
    'gemma2': {
        'plain': ['', 'film was was question question question', '!!!!!!'],
        'first': ['sad B Options B B B', 'hello film film film B B', 'sad in!!!!'],
        'all': ['sad sad sad sad sad sad', 'hello! sad sad', 'sad! sad! sad!'],
        'per_all_b2': [', C C C C C', 'this this this this this this', 'was was was was was was'],
        'mild_all': ['B Options or or or of', 'film film film film B!', '!!!!!!'],
    },
    'phi': {
        'plain': ["J premise ' premise ' premise", 'a great great great great great', "True answer positive a sad '"],
        'first': ['world No of film True and', 'world! question movie a great', 'world! of film True and'],
        'all': [
            'world world world world world world',
            'world world world world world world',
            'world world world world world world',
        ],
        'per_all_b2': [
            'Neither Neither Neither Neither Neither Neither',
            'was was was was was was',
            'premise premise premise premise premise premise',
        ],
        'mild_all': [
            'world world world world world world',
            'world world world world world world',
            'world world world world world world',
        ],
    },
}


def _pinned_cases(lm):
    L, d = lm.num_layers, lm.hidden_size
    g = torch.Generator().manual_seed(7)
    shared = torch.randn(L, d, generator=g)
    per = torch.randn(3, L, d, generator=g)
    return {
        "plain": dict(),
        "first": dict(injection=wb.Injection(shared, scale=3.0), steps="first"),
        "all": dict(injection=wb.Injection(shared, scale=3.0), steps="all"),
        "per_all_b2": dict(injection=wb.Injection(per, scale=3.0, positions="all"), steps="all", batch_size=2),
        "mild_all": dict(injection=wb.Injection(shared, scale=0.3, positions="all"), steps="all"),
    }


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_output_is_what_it_was_before_sampling(arch):
    lm = tiny_model(arch, texts=TEXTS)
    for case, kwargs in _pinned_cases(lm).items():
        assert wb.generate(lm, PROMPTS, max_new_tokens=6, **kwargs) == PINNED[arch][case], (arch, case)


# --------------------------------------------------------------------------------------------- sampling
def test_a_seed_reproduces_samples_and_other_seeds_differ(llama_lm):
    def sample(seed, batch_size=8):
        return wb.generate(llama_lm, PROMPTS, max_new_tokens=8, temperature=1.0, seed=seed, batch_size=batch_size)

    first = sample(1)
    assert sample(1) == first
    assert sample(1, batch_size=1) == first  # each prompt has its own generator: batching does not matter
    assert sample(2) != first and sample(3) != first
    assert first != wb.generate(llama_lm, PROMPTS, max_new_tokens=8)  # it did sample


def test_sampling_leaves_the_global_rng_alone(llama_lm):
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    wb.generate(llama_lm, PROMPTS, max_new_tokens=4, temperature=1.0, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_seed_none_draws_one_that_reproduces(llama_lm):
    out = wb.generate(llama_lm, PROMPTS, max_new_tokens=6, temperature=1.0, return_logprobs=True)
    assert isinstance(out.seed, int)
    again = wb.generate(llama_lm, PROMPTS, max_new_tokens=6, temperature=1.0, seed=out.seed, return_logprobs=True)
    assert again.texts == out.texts and again.token_ids == out.token_ids


@pytest.mark.parametrize("arch", ARCHS)
def test_top_k_1_and_a_tiny_temperature_equal_greedy(arch):
    lm = tiny_model(arch, texts=TEXTS)
    inj = wb.Injection(torch.randn(lm.num_layers, lm.hidden_size, generator=torch.Generator().manual_seed(3)),
                       scale=0.5)
    greedy = wb.generate(lm, PROMPTS, inj, max_new_tokens=6, steps="all")
    assert wb.generate(lm, PROMPTS, inj, max_new_tokens=6, steps="all", temperature=1.0, top_k=1, seed=0) == greedy
    assert wb.generate(lm, PROMPTS, inj, max_new_tokens=6, steps="all", temperature=1e-7, seed=4) == greedy


def test_top_p_keeps_the_smallest_set_reaching_p():
    from workbench.core.sampling import filter_logits

    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])  # sorted: 0.5 (1), 0.3 (3), 0.15 (0), 0.05 (2)
    logits = probs.log()
    for top_p, kept in ((0.45, {1}), (0.7, {1, 3}), (0.9, {0, 1, 3}), (0.99, {0, 1, 2, 3}), (1.0, {0, 1, 2, 3})):
        out = filter_logits(logits, top_p=top_p)
        assert set(torch.isfinite(out[0]).nonzero().flatten().tolist()) == kept, top_p
        assert torch.equal(out[0, list(kept)], logits[0, list(kept)])  # kept logits are unchanged
    tie = filter_logits(torch.tensor([[2.0, 2.0, 1.0, -1.0]]), top_k=1)  # ties with the k-th are kept
    assert torch.isfinite(tie[0]).tolist() == [True, True, False, False]
    both = filter_logits(logits, top_k=3, top_p=0.7)
    assert torch.isfinite(both[0]).tolist() == [False, True, False, True]


def test_top_p_restricts_what_is_sampled(llama_lm):
    """With top_p small enough to keep one token per step, sampling is greedy whatever the seed."""
    greedy = wb.generate(llama_lm, PROMPTS, max_new_tokens=6)
    assert wb.generate(llama_lm, PROMPTS, max_new_tokens=6, temperature=1.0, top_p=1e-6, seed=9) == greedy


# --------------------------------------------------------------------------------------------- stop strings
def test_stop_strings_cut_the_text_and_stop_that_prompt(llama_lm):
    plain = wb.generate(llama_lm, PROMPTS, max_new_tokens=6, return_logprobs=True)
    assert plain.texts == PINNED["llama"]["plain"]  # prompt 1 generates 'question film question film ...'
    out = wb.generate(llama_lm, PROMPTS, max_new_tokens=6, stop=["film"], return_logprobs=True)
    assert out.texts[1] == "question "
    assert out.token_ids[1] == plain.token_ids[1][:2] and out.finish_reasons[1] == "stop"
    assert out.texts[2] == plain.texts[2] and out.token_ids[2] == plain.token_ids[2]  # the others go on
    assert out.finish_reasons[2] == plain.finish_reasons[2] == "length"
    across = wb.generate(llama_lm, PROMPTS, max_new_tokens=6, stop=["xyz", "n f"])  # spans two tokens
    assert across[1] == "questio"
    assert wb.generate(llama_lm, PROMPTS, max_new_tokens=6, stop=["never there"]) == plain.texts


# --------------------------------------------------------------------------------------------- steering steps
def test_steps_all_differs_from_first_with_a_vector_and_not_with_zero(llama_lm):
    L, d = llama_lm.num_layers, llama_lm.hidden_size
    vec = wb.Injection(torch.randn(L, d, generator=torch.Generator().manual_seed(7)), scale=3.0)
    zero = wb.Injection(torch.zeros(L, d), scale=3.0)
    kw = dict(max_new_tokens=6, temperature=1.0, seed=11)
    assert wb.generate(llama_lm, PROMPTS, vec, steps="all", **kw) != wb.generate(llama_lm, PROMPTS, vec, **kw)
    plain = wb.generate(llama_lm, PROMPTS, **kw)
    assert wb.generate(llama_lm, PROMPTS, zero, steps="all", **kw) == plain
    assert wb.generate(llama_lm, PROMPTS, zero, **kw) == plain


def test_per_prompt_vectors_sampled_in_batches(llama_lm):
    vectors = torch.randn(3, llama_lm.num_layers, llama_lm.hidden_size, generator=torch.Generator().manual_seed(2))
    kw = dict(max_new_tokens=6, temperature=0.8, top_p=0.9, seed=3, steps="all")
    together = wb.generate(llama_lm, PROMPTS, wb.Injection(vectors, scale=2.0), **kw)
    assert wb.generate(llama_lm, PROMPTS, wb.Injection(vectors, scale=2.0), batch_size=1, **kw) == together
    swapped = wb.generate(llama_lm, PROMPTS, wb.Injection(vectors[[1, 2, 0]], scale=2.0), **kw)
    assert swapped != together  # each prompt is steered by its own vector


# --------------------------------------------------------------------------------------------- log-probabilities
@pytest.mark.parametrize("sampled", [False, True])
def test_logprobs_equal_a_plain_forward_pass(tiny_lm, sampled):
    kw = dict(temperature=1.0, top_k=5, seed=1) if sampled else {}
    out = wb.generate(tiny_lm, PROMPTS, max_new_tokens=5, return_logprobs=True, **kw)
    for prompt, ids, lps in zip(PROMPTS, out.token_ids, out.logprobs):
        assert len(ids) == len(lps) >= 1
        prompt_ids = encode(tiny_lm, [prompt])["input_ids"][0].tolist()
        full = torch.tensor([prompt_ids + ids])
        with torch.no_grad():
            logits = tiny_lm.hf(input_ids=full).logits[0].float()
        at = logits[len(prompt_ids) - 1: len(prompt_ids) - 1 + len(ids)].log_softmax(-1)
        expected = at.gather(-1, torch.tensor(ids)[:, None])[:, 0]
        assert torch.allclose(torch.tensor(lps), expected, atol=1e-4), (tiny_lm.name, prompt)
        assert tiny_lm.tokenizer.decode(ids, skip_special_tokens=True) == out.texts[PROMPTS.index(prompt)]


# --------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.5), r"temperature must be a finite number >= 0, got -0.5"),
    (dict(temperature=float("nan")), r"temperature must be a finite number"),
    (dict(temperature=1.0, top_p=0.0), r"top_p must be a finite number > 0 and <= 1, got 0.0"),
    (dict(temperature=1.0, top_p=1.5), r"top_p must be a finite number > 0 and <= 1, got 1.5"),
    (dict(temperature=1.0, top_k=0), r"top_k must be a positive int or None, got 0"),
    (dict(temperature=1.0, top_k=2.5), r"top_k must be a positive int or None, got 2.5"),
    (dict(top_k=5), r"top_k=5 has no effect with temperature=0"),
    (dict(top_p=0.9), r"top_p=0.9 has no effect with temperature=0"),
    (dict(temperature=1.0, seed=1.5), r"seed must be a non-negative int, got 1.5"),
    (dict(temperature=1.0, seed="1"), r"seed must be a non-negative int, got '1'"),
    (dict(stop="\n"), r"stop must be a list of strings, got the string '\\n': write stop=\['\\n'\]"),
    (dict(stop=["a", ""]), r"stop\[1\] must be a non-empty string, got ''"),
    (dict(stop=[3]), r"stop\[0\] must be a non-empty string, got 3"),
    (dict(max_new_tokens=0), r"max_new_tokens must be a positive int, got 0"),
    (dict(steps="every"), r"unknown steps 'every'; use one of \('first', 'all'\)"),
    (dict(return_logprobs="yes"), r"return_logprobs must be True or False"),
])
def test_bad_arguments_are_refused_before_any_forward_pass(llama_lm, monkeypatch, kwargs, message):
    import workbench.core.inference as inference

    def no_pass(*args, **kw):
        raise AssertionError("a forward pass started")

    monkeypatch.setattr(inference, "encode", no_pass)
    with pytest.raises(ValueError, match=message):
        wb.generate(llama_lm, PROMPTS, **kwargs)


def test_garbage_logits_warn_when_sampling_too(llama_lm):
    from workbench.core.inference import BadLogitsWarning

    L, d = llama_lm.num_layers, llama_lm.hidden_size
    blowup = wb.Injection(torch.stack([torch.ones(L, d), torch.zeros(L, d)]), scale=3e38)
    with pytest.warns(BadLogitsWarning, match=r"generate: 1 of 2 prompts had non-finite or constant logits"):
        out = wb.generate(llama_lm, ["hello world", "the movie was great"], blowup, max_new_tokens=3,
                          temperature=1.0, seed=0)
    assert len(out) == 2 and out[1] == wb.generate(llama_lm, ["hello world", "the movie was great"],
                                                   max_new_tokens=3, temperature=1.0, seed=0)[1]
