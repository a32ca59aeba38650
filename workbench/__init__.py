"""ATV workbench: steer a frozen LLM with query-specific (adaptive) task vectors, and compare with baselines.

    import workbench as wb
    lm = wb.load_model("smollm2-135m")                  # frozen large model (nnsight-wrapped)
    generator = wb.ATVGenerator(wb.load_encoder("minilm-l6"), lm)
    history = wb.train_atv(lm, generator, [wb.load_task("glue_sst2")], wb.TrainConfig(epochs=2))
    df = wb.evaluate(lm, wb.methods.ATV(generator), ["glue_sst2"], n_test=20)
    wb.summarize(df)
    wb.save_vectors(wb.methods.exports.atv_task_vector(atv, "glue_sst2"), "sst2.gguf", lm=lm)   # llama.cpp, lm-eval
    wb.theory.atv_to_lora(v_small, A, scale, x)         # analyses: wb.theory, wb.geometry, wb.sweeps
"""

from workbench import methods
from workbench.analysis import geometry, sweeps, theory
from workbench.analysis.vocab_projection import logit_lens
from workbench.atv.generator import ATVGenerator
from workbench.atv.presets import presets
from workbench.atv.training import TrainConfig, train_atv
from workbench.core.encoders import Encoder, load_encoder
from workbench.core.inference import Generation, generate, last_token_states, next_token_logits
from workbench.core.interventions import Injection, resolve_layers
from workbench.core.models import LanguageModel, load_model
from workbench.core.vector_files import SteeringVectors, load_vectors, save_vectors
from workbench.eval.efficiency import efficiency_table
from workbench.eval.evaluate import evaluate
from workbench.eval.stats import paired
from workbench.eval.tables import summarize, tables_like_paper
from workbench.methods.base import Method, PreparedBatch
from workbench.tasks.registry import Task, load_task, task_names

__all__ = [
    "ATVGenerator", "Encoder", "Generation", "Injection", "LanguageModel", "Method", "PreparedBatch", "Task",
    "TrainConfig",
    "efficiency_table", "evaluate", "generate", "geometry", "last_token_states", "load_encoder", "load_model",
    "load_task", "load_vectors", "logit_lens", "methods", "next_token_logits", "paired", "presets", "resolve_layers",
    "save_vectors", "SteeringVectors", "summarize", "sweeps", "tables_like_paper", "task_names", "theory",
    "train_atv",
]
__version__ = "0.1.0"
