"""The whole training configuration: one typed model per concept (docs/algorithm.md).

`RunConfig` is the single source of truth: validated at the API edge, stored with a
run, and handed to the trainer unchanged.
"""

from __future__ import annotations

import string
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

# Bounds: what a real run could need, and no more (a config is client input in the service).
MAX_STEPS = 100_000
MAX_TOKENS = 32_768  # per response, per teacher context
MAX_TEMPLATE_CHARS = 4_096
MAX_SEED = 2**32 - 1

# Optimiser steps of a run: one rule for `opsd train`, the API and everything in between.
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS, description="optimiser steps")]


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DistillConfig(_Config):
    """Self-distillation loss (docs/algorithm.md "Divergences", "Supports", "Stabilisers")."""

    alpha: float = Field(
        1.0, ge=0.0, le=1.0, description="0 forward KL, 1 reverse KL, between: JSD(alpha)"
    )
    support: Literal["full_logits", "topk_logits", "sampled_token"] = "full_logits"
    topk: int = Field(
        20, ge=1, le=1024, description="ids gathered at the student's top-k (topk_logits)"
    )
    topk_tail: bool = Field(
        True, description="append a tail bucket (True) or renormalise over the k ids"
    )
    token_clip: float | None = Field(
        None, gt=0, le=1e4, description="clamp each token's divergence at this value"
    )
    is_clip: float | None = Field(
        None, gt=0, le=1e4, description="clip of the importance ratio pi_theta / pi_sampler"
    )
    temperature: float = Field(
        1.0, gt=0, le=100, description="applied to student and teacher logits"
    )


class GRPOConfig(_Config):
    """Group-relative policy optimisation (docs/algorithm.md "GRPO")."""

    scaling: Literal["group", "batch", "none"] = "group"
    epsilon: float = Field(0.2, gt=0, le=10)
    epsilon_high: float | None = Field(
        None, gt=0, le=10, description="upper clip; defaults to epsilon"
    )
    eps_std: float = Field(1e-6, gt=0, le=1)


class LossConfig(_Config):
    """How the distillation and GRPO terms are combined, aggregated and masked."""

    distill: DistillConfig = DistillConfig()
    grpo: GRPOConfig = GRPOConfig()
    distill_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="w in L = (1-w) L_grpo + w L_distill; 0 is pure GRPO"
    )
    advantage_mix: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="lambda in A = lambda A_grpo + (1-lambda) A_sd (sampled_token support only)",
    )
    aggregation: Literal["token_mean", "sequence_mean"] = "token_mean"
    mask_truncated: bool = Field(False, description="drop responses cut off by the token budget")

    @model_validator(mode="after")
    def _advantage_mix_needs_sampled_token(self) -> LossConfig:
        if self.advantage_mix is not None and self.distill.support != "sampled_token":
            raise ValueError("advantage_mix requires distill.support='sampled_token'")
        return self


class TeacherConfig(_Config):
    """Which weights score the student's tokens (docs/algorithm.md "Teacher weights")."""

    weights: Literal["frozen", "live", "ema", "trust_region"] = "frozen"
    rate: float = Field(0.05, gt=0.0, le=1.0, description="EMA rate r, or trust-region mix r")


# template field -> (fields it may use, fields it must use)
_TEMPLATE_FIELDS = {
    "reprompt_template": ({"prompt", "solution", "feedback"}, ("prompt",)),
    "solution_template": ({"solution"}, ("solution",)),
    "feedback_template": ({"feedback"}, ("feedback",)),
}


class ContextConfig(_Config):
    """How the teacher context is built from feedback (docs/algorithm.md "Teacher context")."""

    use_sibling: bool = True
    success_threshold: float = Field(1.0, ge=-1e6, le=1e6)
    dont_reprompt_on_self_success: bool = True
    strip_thinking: bool = True
    use_feedback: bool = True
    feedback_only_without_solution: bool = True
    use_ground_truth: bool = False
    use_demonstration: bool = True
    reprompt_template: str = Field(
        "{prompt}\n{solution}{feedback}Now answer correctly:\n", max_length=MAX_TEMPLATE_CHARS
    )
    solution_template: str = Field(
        "A correct solution:\n{solution}\n", max_length=MAX_TEMPLATE_CHARS
    )
    feedback_template: str = Field("Feedback:\n{feedback}\n", max_length=MAX_TEMPLATE_CHARS)
    max_reprompt_tokens: int = Field(2048, ge=1, le=MAX_TOKENS)

    @field_validator("reprompt_template", "solution_template", "feedback_template")
    @classmethod
    def _template_fields(cls, template: str, info: ValidationInfo) -> str:
        """Templates use plain `{name}` fields (str.format; write literal braces as `{{ }}`)."""
        allowed, required = _TEMPLATE_FIELDS[info.field_name]
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ValueError(
                f"{info.field_name}: malformed template ({e}); write literal braces as {{{{ }}}}"
            ) from e
        fields = {name for _, name, _, _ in parsed if name is not None}
        unknown = sorted(fields - allowed)
        if unknown:
            raise ValueError(
                f"{info.field_name}: unknown field(s) {', '.join(f'{{{u}}}' for u in unknown)}; "
                f"allowed: {', '.join(f'{{{a}}}' for a in sorted(allowed))} "
                "(write literal braces as {{ }})"
            )
        if any(spec or conversion for _, name, spec, conversion in parsed if name is not None):
            raise ValueError(
                f"{info.field_name}: use plain {{name}} fields, without !conversion or :spec"
            )
        missing = [f"{{{f}}}" for f in required if f not in fields]
        if missing:
            raise ValueError(f"{info.field_name} must contain {' and '.join(missing)}")
        if info.field_name == "reprompt_template" and not fields & {"solution", "feedback"}:
            raise ValueError("reprompt_template must contain {solution} or {feedback}")
        return template


class VLLMConfig(_Config):
    """The in-process vLLM engine of `sampling.backend: vllm` (trainer/vllm_sampler.py)."""

    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=0.95, description="share of accelerator memory (on CPU: of RAM) it reserves"
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        ge=1 << 20,
        le=1 << 40,
        description="the KV cache's size, which then replaces gpu_memory_utilization",
    )
    enforce_eager: bool = Field(True, description="no graph capture or compilation (fast start)")
    max_model_len: int | None = Field(
        None, ge=16, le=2 * MAX_TOKENS, description="prompt + response tokens; default: the model's"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "float32", description="the engine's weights (float32: log-probs match the trainer's)"
    )


class SamplingConfig(_Config):
    temperature: float = Field(1.0, gt=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1.0)
    top_k: int = Field(0, ge=0, le=1_000_000, description="0 disables top-k filtering")
    max_new_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    backend: Literal["transformers", "vllm", "server"] = Field(
        "transformers",
        description="what generates: transformers' `generate` on the policy itself, an "
        "in-process vLLM engine, or a vLLM server at `server_url`; the policy's weights are "
        "pushed to either engine after every change",
    )
    vllm: VLLMConfig = VLLMConfig()
    server_url: str | None = Field(
        None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="the vLLM server of backend `server` (its OpenAI-compatible API)",
    )
    server_model: str | None = Field(
        None, max_length=256, description="the server's name for the model; default: the run's"
    )
    server_adapters: bool = Field(
        False,
        description="a LoRA run pushes its adapter to the server through vLLM's runtime "
        "adapter endpoint (a server started with --enable-lora and "
        "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1) instead of merged full weights",
    )

    @model_validator(mode="after")
    def _server_named(self) -> SamplingConfig:
        if self.backend == "server" and self.server_url is None:
            raise ValueError("sampling.backend 'server' needs sampling.server_url")
        if self.server_adapters and self.backend != "server":
            raise ValueError("sampling.server_adapters needs sampling.backend 'server'")
        return self


Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimConfig(_Config):
    lr: float = Field(2e-4, gt=0, le=1)
    weight_decay: float = Field(0.01, ge=0, le=10)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    warmup_steps: int = Field(10, ge=0, le=MAX_STEPS)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    grad_clip: float | None = Field(1.0, gt=0, le=1e4)
    grad_accumulation: int = Field(1, ge=1, le=1024, description="micro-batches per optimiser step")
    bf16: bool | Literal["auto"] = "auto"


ModuleName = Annotated[str, Field(min_length=1, max_length=256)]


class LoraConfig(_Config):
    r: int = Field(8, ge=1, le=1024)
    alpha: int = Field(16, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[ModuleName] | Literal["all-linear"] = Field("all-linear", max_length=256)


class EvalConfig(_Config):
    every: int = Field(50, ge=1, le=MAX_STEPS)
    size: int = Field(256, ge=1, le=100_000, description="held-out tasks evaluated")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)


class GuardConfig(_Config):
    """When a run stops itself before it collapses (docs/operating.md "Run health"); every
    guard is off until set. A stopped run keeps its best checkpoint (by held-out accuracy)."""

    eval_drop: float | None = Field(
        None,
        gt=0,
        le=1,
        description="stop when a held-out evaluation falls this far below the best so far",
    )
    entropy_min: float | None = Field(
        None,
        ge=0,
        le=100,
        description="stop when the step metric `entropy` (nats per token) stays below this",
    )
    response_tokens_max: float | None = Field(
        None,
        gt=0,
        le=MAX_TOKENS,
        description="stop when the mean response length (tokens) stays above this",
    )
    patience: int = Field(
        3,
        ge=1,
        le=1000,
        description="consecutive steps the entropy or length guard must hold before it stops",
    )


class RunConfig(_Config):
    """Everything one training run needs; `opsd train` and `POST /v1/runs` take this."""

    env: str = Field("arithmetic", min_length=1, max_length=128)
    env_config: dict = Field(default_factory=dict)
    model: str = Field("tiny", min_length=1, max_length=256)
    steps: Steps = 300
    seed: int = Field(0, ge=0, le=MAX_SEED)
    prompts_per_step: int = Field(8, ge=1, le=1024)
    samples_per_prompt: int = Field(8, ge=1, le=256)
    max_off_policy_steps: int = Field(0, ge=0, le=1000)
    sampling: SamplingConfig = SamplingConfig()
    loss: LossConfig = LossConfig()
    teacher: TeacherConfig = TeacherConfig()
    context: ContextConfig = ContextConfig()
    optim: OptimConfig = OptimConfig()
    lora: LoraConfig | None = None
    eval: EvalConfig = EvalConfig()
    guard: GuardConfig = GuardConfig()

    @model_validator(mode="after")
    def _adapters_need_lora(self) -> RunConfig:
        if self.sampling.server_adapters and self.lora is None:
            raise ValueError("sampling.server_adapters pushes a LoRA adapter: set `lora` too")
        return self

    @property
    def algorithm(self) -> str:
        """`grpo` when the distillation term is off, `sdpo` when GRPO is off, else `mixed`."""
        w = self.loss.distill_weight
        return (
            "grpo" if w == 0 else "sdpo" if w == 1 and self.loss.advantage_mix is None else "mixed"
        )
