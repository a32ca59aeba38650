"""Analyses from the paper: Theorem 1 (``theory``), vector geometry (``geometry``), λ / depth sweeps (``sweeps``).

Builds on :mod:`workbench.eval` and below.
"""
