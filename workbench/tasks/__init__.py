"""Tasks: the registry and task files, templates, prompts, answer tokens, demonstration retrieval, data preparation.

Builds on :mod:`workbench.core` only. Modules: ``registry``, ``templates``, ``prompts``, ``answers``, ``retrieval``,
``prepare``, ``hub_builders``.
"""
