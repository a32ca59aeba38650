"""Analyses from the paper and the reviewers' questions: Theorem 1 (``theory``), vector geometry (``geometry``), λ /
depth sweeps (``sweeps``) and their choice on validation (``selection``), the logit lens of vectors
(``vocab_projection``), steered generations side by side (``generations``), the probe and oracle ceilings
(``ceilings``, ``oracle``), side effects (``side_effects``: perplexity, off-target accuracy), data scaling and seeds
(``scaling``).

Builds on :mod:`workbench.eval` and below.
"""
