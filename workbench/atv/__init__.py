"""ATV itself: the generator, training examples, the answer loss, the prefix-cached fast path, training,
checkpoints and presets.

Builds on :mod:`workbench.core` and :mod:`workbench.tasks`. Modules: ``generator``, ``examples``, ``loss``,
``fastpath``, ``training``, ``checkpoints``, ``presets``.
"""
