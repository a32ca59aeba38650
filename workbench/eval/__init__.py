"""Evaluation: the protocol (``evaluate``), scoring, tables, efficiency, run folders and method comparisons.

Builds on :mod:`workbench.methods` and below. Modules: ``evaluate``, ``scoring``, ``tables``, ``efficiency``,
``runs``, ``compare``.
"""
