"""The core: models, per-architecture facts, encoders, tokens, interventions and forward passes.

Nothing here imports another subpackage of the workbench. Modules: ``architectures``, ``models``, ``encoders``,
``tokens``, ``interventions``, ``inference``, ``batching``, ``files``, ``testing`` (tiny models built in code).
"""
