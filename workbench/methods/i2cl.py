"""I2CL (Li et al., 2024): implicit in-context learning with context vectors and calibrated linear coefficients.

* Context vectors: for each task, the last-token outputs of every layer's attention and MLP modules on each
  demonstration separately (`shots_per_class` demos per label word, 5 in the official code), averaged:
  ``cv[task]`` is ``[L, 2, d]`` (module 0 = attention, 1 = MLP).
* Injection (:class:`ContextInjection`, through nnsight on the modules' outputs): ``out <- b * out + a * cv`` at
  all (real) positions, one ``(a, b)`` per layer and module, initialised to (0.1, 1.0).
* Calibration: label-word cross-entropy (full-vocabulary logits at the last position vs. the first answer token) of
  the zero-shot demonstration questions, AdamW (lr 0.01, weight decay 1e-3), cosine schedule with 5 % linear
  warm-up, noise ``N(0, 1) * 0.001 * ||out||`` added during training. As in the ATV paper (B.2) one set of
  coefficients is shared by all tasks while each task keeps its own context vectors (`epochs` = 15 there).
* Unseen tasks: each query uses the context vectors of the in-domain task owning the most similar calibration
  question (MiniLM cosine similarity, :mod:`workbench.tasks.retrieval`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from workbench.core.checks import check_int, check_number, check_optional_int, check_seed, check_template
from workbench.core.inference import next_token_logits
from workbench.core.interventions import MODULES, ContextInjection, check_positions
from workbench.core.remote import require_local
from workbench.methods.base import Method, PreparedBatch
from workbench.methods.demos import per_class_demos, single_demos, sublayer_outputs
from workbench.tasks.answers import target_first_token
from workbench.tasks.prompts import TRAIN_PREFIX, build_text
from workbench.tasks.registry import TaskSpec, resolve_tasks
from workbench.tasks.retrieval import DEFAULT_RETRIEVER, QueryIndex

if TYPE_CHECKING:
    from workbench.core.models import LanguageModel

def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class I2CL(Method):
    """Context vectors per task + shared calibrated coefficients (see the module docstring)."""

    fitted_attributes = ("vectors", "questions", "initial_coefs", "losses", "coefs", "index")

    name = "i2cl"

    def __init__(
        self,
        shots_per_class: int = 5,
        max_demos: int | None = None,
        epochs: int = 15,
        lr: float = 0.01,
        weight_decay: float = 1e-3,
        warmup: float = 0.05,
        noise: float = 1e-3,
        batch_size: int = 2,
        init: tuple[float, float] = (0.1, 1.0),
        positions: str = "all",
        template: int = 0,
        seed: int = 42,
        retriever: str = DEFAULT_RETRIEVER,
    ):
        self.shots_per_class = check_int(shots_per_class, "shots_per_class")
        self.max_demos = check_optional_int(max_demos, "max_demos")
        self.epochs, self.lr = check_int(epochs, "epochs"), check_number(lr, "lr")
        self.weight_decay = check_number(weight_decay, "weight_decay", strict=False)
        self.warmup = check_number(warmup, "warmup (a share of the steps)", strict=False, maximum=1.0)
        self.noise, self.batch_size = check_number(noise, "noise", strict=False), check_int(batch_size, "batch_size")
        if isinstance(init, (str, bytes)) or not isinstance(init, Sequence) or len(init) != 2:
            raise ValueError(f"init must be the pair (a, b) of initial coefficients, got {init!r}")
        self.init = tuple(check_number(v, "init", minimum=None) for v in init)
        self.positions, self.template = check_positions(positions), check_template(template)
        self.seed = check_seed(seed)
        self.retriever = retriever
        self.vectors: dict[str, torch.Tensor] = {}  # task -> context vectors [L, 2, d]
        self.coefs: torch.Tensor | None = None  # [L, 2, 2]: (a, b) per layer and module
        self.initial_coefs: torch.Tensor | None = None
        self.losses: list[float] = []  # mean calibration loss per epoch
        self.questions: dict[str, list[str]] = {}  # task -> calibration questions (unrendered)
        self.index: QueryIndex | None = None

    def fit(self, lm: LanguageModel, train_tasks: TaskSpec) -> I2CL:
        """Context vectors of `train_tasks` (names, Tasks or a list of them) and the shared coefficients."""
        require_local(lm, "I2CL's fit")
        tasks = resolve_tasks(train_tasks)
        examples: list[tuple[str, int, str]] = []  # (rendered question, target token, task)
        for task in tasks:
            demos = per_class_demos(task, self.shots_per_class, self.seed, self.max_demos)
            self.vectors[task.name] = sublayer_outputs(lm, single_demos(lm, task, demos, self.template)).mean(0)
            questions = [build_text(task.templates[self.template], it.input, TRAIN_PREFIX) for it in demos]
            self.questions[task.name] = questions
            for q, it in zip(questions, demos):
                prompt = lm.render(q)
                examples.append((prompt, target_first_token(lm.tokenizer, it.output, prompt=prompt), task.name))
        self.calibrate(lm, examples)
        keys = [name for name, qs in self.questions.items() for _ in qs]
        self.index = QueryIndex(keys, [q for qs in self.questions.values() for q in qs], self.retriever)
        return self

    def calibrate(self, lm: LanguageModel, examples: Sequence[tuple[str, int, str]]) -> None:
        """Train the shared (a, b) coefficients on `examples` (prompt, target token id, task name)."""
        L = lm.num_layers
        coefs = torch.tensor(self.init, dtype=torch.float32).repeat(L, 2, 1).to(lm.device).requires_grad_(True)
        self.initial_coefs = coefs.detach().cpu().clone()
        opt = torch.optim.AdamW([coefs], lr=self.lr, weight_decay=self.weight_decay)
        steps_per_epoch = math.ceil(len(examples) / self.batch_size)
        total = self.epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, int(self.warmup * total)))
        rng = random.Random(self.seed)
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        self.losses = []
        try:
            for _ in range(self.epochs):
                order = rng.sample(range(len(examples)), len(examples))
                epoch_losses = []
                for start in range(0, len(order), self.batch_size):
                    batch = [examples[i] for i in order[start:start + self.batch_size]]
                    cv = torch.stack([self.vectors[name] for _, _, name in batch])
                    inj = ContextInjection(cv, coefs, self.positions, noise=self.noise)
                    logits = next_token_logits(lm, [p for p, _, _ in batch], inj, batch_size=len(batch))
                    loss = F.cross_entropy(logits, torch.tensor([t for _, t, _ in batch]))
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    sched.step()
                    epoch_losses.append(float(loss.detach()))
                self.losses.append(sum(epoch_losses) / len(epoch_losses))
        finally:
            torch.random.set_rng_state(gen_state)
        self.coefs = coefs.detach().cpu()

    def prepare(self, lm: LanguageModel, task: Any, items: Sequence[Any], texts: Sequence[str],
                seed: int = 42) -> PreparedBatch:
        if self.coefs is None or self.index is None:
            raise RuntimeError("I2CL is not fitted: call fit(lm, in_domain_tasks) first")
        prompts = [lm.render(t) for t in texts]
        if task.name in self.vectors:
            cv = self.vectors[task.name]
            info = [{"cv_task": task.name, "similarity": None} for _ in texts]
        else:
            nearest = self.index.nearest_keys(texts)
            cv = torch.stack([self.vectors[name] for name, _ in nearest])
            info = [{"cv_task": name, "similarity": s} for name, s in nearest]
        return PreparedBatch(prompts=prompts, intervention=ContextInjection(cv, self.coefs, self.positions), info=info)

    def config(self) -> dict:
        return {"name": self.name, "shots_per_class": self.shots_per_class, "max_demos": self.max_demos,
                "epochs": self.epochs, "lr": self.lr, "weight_decay": self.weight_decay, "warmup": self.warmup,
                "noise": self.noise, "batch_size": self.batch_size, "init": list(self.init),
                "positions": self.positions, "template": self.template, "seed": self.seed, "modules": list(MODULES),
                "coefficients": "shared",
                "optimizer": "AdamW", "unseen": f"nearest calibration question ({self.retriever} cosine)"}
