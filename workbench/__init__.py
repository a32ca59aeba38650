"""ATV workbench: steer a frozen LLM with query-specific (adaptive) task vectors, and compare with baselines.

    import workbench as wb
    lm = wb.load_model("smollm2-135m")
    enc = wb.load_encoder("minilm-l6")
"""

from .encoders import Encoder, load_encoder
from .inference import generate, last_token_states, next_token_logits
from .injection import Injection, resolve_layers
from .methods.base import Method, PreparedBatch
from .models import LanguageModel, load_model

__all__ = [
    "Encoder", "Injection", "LanguageModel", "Method", "PreparedBatch",
    "generate", "last_token_states", "load_encoder", "load_model", "next_token_logits", "resolve_layers",
]
__version__ = "0.1.0"
