"""Teacher weights: which network scores the student's tokens (docs/algorithm.md "Teacher weights").

The teacher is the policy's own network under other weights:
- `frozen`: the initial policy. Full fine-tuning keeps a frozen copy; LoRA runs the
  policy with its adapter disabled (no second model).
- `live`: the current policy under stop-gradient.
- `ema`: `theta_bar <- (1 - r) theta_bar + r theta` after every optimiser step. Full
  fine-tuning keeps a copy of the model; LoRA keeps a second adapter (`EMA_ADAPTER`)
  inside the same PeftModel, so the teacher costs adapter-sized memory.
- `trust_region`: `log q ~ (1 - r) log q_frozen + r log q_live`, renormalised (two passes).

Every teacher pass runs under `torch.no_grad()` in eval mode (dropout off) and leaves the
policy as it found it: each module's train/eval flag, each parameter's `requires_grad`
and the active adapter.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator

import torch
from peft import PeftModel
from torch import nn

from trainer.config import TeacherConfig
from trainer.distributed import full_tensor, shard, shard_like

EMA_ADAPTER = "ema_teacher"


class TeacherStateError(ValueError):
    """A saved teacher state does not fit this teacher (other mode, weights or shapes)."""


@contextlib.contextmanager
def _scoring(model: nn.Module) -> Iterator[None]:
    """Eval mode and no grad for one teacher pass; restore modes and `requires_grad` exactly."""
    modes = [(module, module.training) for module in model.modules()]
    grad_flags = [(param, param.requires_grad) for param in model.parameters()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grad_flags:
            param.requires_grad_(requires_grad)


@contextlib.contextmanager
def _active_adapter(policy: PeftModel, name: str) -> Iterator[None]:
    """Run the PeftModel with adapter `name`, then switch back to the trainable one."""
    previous = policy.active_adapter
    policy.set_adapter(name, inference_mode=True)
    try:
        yield
    finally:
        policy.set_adapter(previous)


def _fingerprint(model: nn.Module) -> list[torch.Tensor]:
    """A few weights of every tensor: enough to tell the initial policy from a trained one.
    (Of the whole tensors: with a sharded model, every process computes it.)"""
    return [
        full_tensor(p.detach()).flatten()[:: max(1, p.numel() // 8)][:8].cpu().clone()
        for p in model.parameters()
    ]


class Teacher:
    """Scores token sequences with the teacher weights chosen by `TeacherConfig.weights`.

    `policy` is a transformers causal LM (full fine-tuning) or a peft `PeftModel` (LoRA).
    Construct the teacher from the *initial* policy, before any optimiser step and before
    `load_checkpoint`; call `update()` after every optimiser step.
    """

    def __init__(self, policy: nn.Module, cfg: TeacherConfig):
        self.policy = policy
        self.cfg = cfg
        self.is_lora = isinstance(policy, PeftModel)
        self.adapter = policy.active_adapter if self.is_lora else None
        self._copy: nn.Module | None = None  # full FT: the frozen or EMA copy of the policy
        self._pairs: list[tuple[str, str]] = []  # EMA: (teacher tensor, policy tensor it follows)
        self._ema: dict[str, torch.Tensor] = {}  # name -> teacher tensor, lerped by update()
        self._ema_targets: list[torch.Tensor] = []  # the policy tensors they follow
        needs_copy = cfg.weights in ("frozen", "ema", "trust_region")
        if self.is_lora and cfg.weights == "ema":
            self._add_ema_adapter()
        elif not self.is_lora and needs_copy:
            self._copy = copy.deepcopy(policy).eval().requires_grad_(False)
            self._copy.zero_grad(set_to_none=True)
            if cfg.weights == "ema":
                self._pairs = [(name, name) for name, _ in policy.named_parameters()]
        self._follow()

    def _follow(self) -> None:
        """Point the EMA at the current parameter objects of the teacher and the policy."""
        holder = self._copy if self._copy is not None else self.policy
        teacher_params = dict(holder.named_parameters())
        policy_params = dict(self.policy.named_parameters())
        self._ema = {name: teacher_params[name] for name, _ in self._pairs}
        self._ema_targets = [policy_params[name] for _, name in self._pairs]

    def _add_ema_adapter(self) -> None:
        """A second LoRA adapter, a copy of the trainable one, that never trains."""
        policy = self.policy
        policy.add_adapter(EMA_ADAPTER, copy.deepcopy(policy.peft_config[self.adapter]))
        params = dict(policy.named_parameters())
        tag, ema_tag = f".{self.adapter}.", f".{EMA_ADAPTER}."
        self._pairs = [(name.replace(tag, ema_tag), name) for name in params if tag in name]
        with torch.no_grad():
            for ema_name, name in self._pairs:
                params[ema_name].copy_(params[name])
                params[ema_name].requires_grad_(False)

    def shard(self) -> None:
        """After the policy was sharded (trainer.distributed.shard): shard the teacher's
        own copy the same way, and follow the new shards, each process updating its own."""
        if self._copy is not None:
            shard(self._copy)
        self._follow()

    @torch.no_grad()
    def score(self, forward: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        """Run `forward(model) -> logits` under the teacher weights.

        For `trust_region` it runs twice (frozen and live) and returns the renormalised
        log-space interpolation `(1-r) log q_frozen + r log q_live`, which are valid logits.
        """
        if self.cfg.weights != "trust_region":
            return self._forward(self.cfg.weights, forward)
        r = self.cfg.rate
        logits_live = self._forward("live", forward)  # [B, L, V]
        logp_live = torch.log_softmax(logits_live.float(), dim=-1)
        logp_frozen = torch.log_softmax(self._forward("frozen", forward).float(), dim=-1)
        logp_mixed = torch.log_softmax((1 - r) * logp_frozen + r * logp_live, dim=-1)
        return logp_mixed.to(logits_live.dtype)  # [B, L, V]

    def _forward(self, weights: str, forward: Callable[[nn.Module], torch.Tensor]) -> torch.Tensor:
        model, weights_ctx = self.policy, contextlib.nullcontext()
        if weights != "live" and not self.is_lora:
            model = self._copy
        elif weights == "frozen":
            weights_ctx = self.policy.disable_adapter()
        elif weights == "ema":
            weights_ctx = _active_adapter(self.policy, EMA_ADAPTER)
        with _scoring(model), weights_ctx:
            return forward(model)

    @torch.no_grad()
    def update(self) -> None:
        """After an optimiser step: `theta_bar <- (1 - r) theta_bar + r theta` (`ema` only)."""
        if self._ema:
            torch._foreach_lerp_(list(self._ema.values()), self._ema_targets, self.cfg.rate)

    def state_dict(self) -> dict:
        """What an exact resume needs: the EMA weights, or a fingerprint of the frozen copy."""
        state: dict = {"weights": self.cfg.weights, "rate": self.cfg.rate}
        if self._ema:
            state["ema"] = {name: t.detach() for name, t in self._ema.items()}
        elif self._copy is not None:
            state["frozen_fingerprint"] = _fingerprint(self._copy)
        return state

    def load_state_dict(self, state: dict) -> None:
        if state["weights"] != self.cfg.weights:
            raise TeacherStateError(
                f"saved teacher uses {state['weights']!r} weights, this one {self.cfg.weights!r}"
            )
        if self._ema:
            saved = state["ema"]
            if saved.keys() != self._ema.keys():
                raise TeacherStateError("saved EMA teacher has other tensors than this one")
            with torch.no_grad():
                for name, tensor in self._ema.items():
                    tensor.copy_(shard_like(saved[name], tensor))
        elif self._copy is not None:
            saved = state["frozen_fingerprint"]
            current = _fingerprint(self._copy)
            if len(saved) != len(current) or not all(map(torch.equal, saved, current)):
                raise TeacherStateError(
                    "the frozen teacher differs from the initial weights of the saved run: "
                    "build the policy from the initial weights and the Teacher before loading"
                )
