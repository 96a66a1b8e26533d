"""Teacher context: the prompt plus what else the teacher sees (docs/algorithm.md "Teacher context").

For every attempt in a group (all samples of one prompt) we choose what goes into the
teacher's context `x~`:

- the *solution* slot, by preference: a successful sibling's response (never the
  attempt's own success by default), privileged ground truth, a task demonstration;
- the *feedback* slot: the environment's feedback on this attempt, by default only
  when the solution slot is empty.

The student's own failed response is never placed in the context: it is the
continuation the teacher scores. An attempt with both slots empty has no teacher
signal (`None`) and is masked out of the loss.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trainer.config import ContextConfig

log = logging.getLogger(__name__)

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


@dataclass(frozen=True)
class Attempt:
    """One sampled response of a group, as the environment judged it."""

    response: str  # the sampled response text
    reward: float
    feedback: str | None  # environment feedback text; None when the environment has nothing to say


@dataclass(frozen=True)
class _Slots:
    """What fills the two privileged slots of one teacher context (None: slot empty)."""

    solution: str | None
    feedback: str | None


def strip_thinking(text: str) -> str:
    """Remove `<think>...</think>` blocks, a leading block whose `<think>` was in the prompt
    (`...</think>answer`), and a trailing unclosed `<think>...`."""
    text = _THINK_BLOCK.sub("", text)
    if "</think>" in text:
        text = text.rpartition("</think>")[2]
    if "<think>" in text:
        text = text.partition("<think>")[0]
    return text.strip()


def _nonempty(text: str | None) -> str | None:
    return text if text is not None and text.strip() else None


def _sibling_solution(i: int, attempts: Sequence[Attempt], cfg: ContextConfig) -> str | None:
    """First successful attempt of the group other than `i` (or `i` itself when
    `dont_reprompt_on_self_success` is off), with thinking stripped if asked."""
    for j, sibling in enumerate(attempts):
        if sibling.reward < cfg.success_threshold:
            continue
        if j == i and cfg.dont_reprompt_on_self_success:
            continue
        text = strip_thinking(sibling.response) if cfg.strip_thinking else sibling.response
        if _nonempty(text):
            return text
    return None


def _choose_slots(
    attempts: Sequence[Attempt],
    cfg: ContextConfig,
    ground_truth: str | None,
    demonstration: str | None,
) -> list[_Slots | None]:
    """Apply the section-3 preference rules to every attempt of one group."""
    slots: list[_Slots | None] = []
    for i, attempt in enumerate(attempts):
        solution = None
        if cfg.use_sibling:
            solution = _sibling_solution(i, attempts, cfg)
        if solution is None and cfg.use_ground_truth:
            solution = _nonempty(ground_truth)
        if solution is None and cfg.use_demonstration:
            solution = _nonempty(demonstration)
        feedback = None
        if cfg.use_feedback and not (cfg.feedback_only_without_solution and solution is not None):
            feedback = _nonempty(attempt.feedback)
        has_signal = solution is not None or feedback is not None
        slots.append(_Slots(solution, feedback) if has_signal else None)
    return slots


def _render(prompt: str, slots: _Slots, cfg: ContextConfig) -> str:
    """Fill the templates. `str.format` parses only the template, so braces inside the
    inserted values are kept verbatim; an empty slot renders as ""."""
    solution = (
        "" if slots.solution is None else cfg.solution_template.format(solution=slots.solution)
    )
    feedback = (
        "" if slots.feedback is None else cfg.feedback_template.format(feedback=slots.feedback)
    )
    return cfg.reprompt_template.format(prompt=prompt, solution=solution, feedback=feedback)


def render_teacher_texts(
    prompt: str,
    attempts: Sequence[Attempt],
    cfg: ContextConfig,
    ground_truth: str | None = None,
    demonstration: str | None = None,
) -> list[str | None]:
    """One teacher context text per attempt of a group, or None where the attempt has no
    teacher signal (docs/algorithm.md "Teacher context"). Not truncated: see `TeacherContextBuilder`."""
    chosen = _choose_slots(attempts, cfg, ground_truth, demonstration)
    return [None if s is None else _render(prompt, s, cfg) for s in chosen]


def encode_prompt(tokenizer, text: str, tools: Sequence[dict] | None = None) -> list[int]:
    """Token ids of a prompt, encoded exactly the same way for student and teacher.

    With a chat template: one user turn plus the generation prompt, with the `tools`
    schemas (`{"type": "function", "function": {...}}`) when given. Without one: the
    plain tokens preceded by `bos_token_id` when the tokenizer has one (`tools` unused:
    a plain prompt describes its tools in its own text).
    """
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}],
            tools=list(tools) if tools else None,
            add_generation_prompt=True,
            tokenize=True,
        )
        if isinstance(out, Mapping):  # transformers 5.x returns a BatchEncoding
            out = out["input_ids"]
        if len(out) > 0 and isinstance(out[0], list):  # a batch of one
            out = out[0]
        return [int(t) for t in out]
    ids = [int(t) for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    bos = getattr(tokenizer, "bos_token_id", None)
    return ids if bos is None else [bos, *ids]


class TeacherContextBuilder:
    """Token ids of the student prompt and of the per-attempt teacher contexts.

    Truncation (docs/algorithm.md "Teacher context", `max_reprompt_tokens`): when a teacher context is
    too long, characters are dropped from the *left* of the privileged text, i.e. the
    solution and feedback values concatenated in the order the reprompt template places
    them, so that the end of the privileged text survives. The prompt and all template
    text (including the solution/feedback block headers) stay intact. The cut is found by
    binary search on the number of dropped characters, re-encoding the whole context each
    time, so the count is exact whatever the tokenizer or chat template. If even the
    context without any privileged text is longer than the limit, the last
    `max_reprompt_tokens` tokens of the untruncated context are kept.
    """

    def __init__(self, tokenizer, cfg: ContextConfig, tools: Sequence[dict] | None = None):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.tools = list(tools) if tools else None  # tool schemas for the chat template

    def with_tools(self, tools: Sequence[dict]) -> TeacherContextBuilder:
        """The same builder, rendering student and teacher prompts with these tool schemas."""
        return TeacherContextBuilder(self.tokenizer, self.cfg, tools)

    def encode(self, text: str) -> list[int]:
        return encode_prompt(self.tokenizer, text, self.tools)

    def student_prompt_ids(self, prompt: str) -> list[int]:
        return self.encode(prompt)

    def teacher_prompt_ids(
        self,
        prompt: str,
        attempts: Sequence[Attempt],
        ground_truth: str | None = None,
        demonstration: str | None = None,
    ) -> list[list[int] | None]:
        """One list of teacher-context ids per attempt, or None (no teacher signal)."""
        chosen = _choose_slots(attempts, self.cfg, ground_truth, demonstration)
        return [None if s is None else self._fit(prompt, s) for s in chosen]

    def _fit(self, prompt: str, slots: _Slots) -> list[int]:
        limit = self.cfg.max_reprompt_tokens
        full = self.encode(_render(prompt, slots, self.cfg))
        if len(full) <= limit:
            return full
        privileged_len = len(slots.solution or "") + len(slots.feedback or "")

        def encode_dropping(n: int) -> list[int]:
            return self.encode(_render(prompt, self._drop_left(slots, n), self.cfg))

        bare = encode_dropping(privileged_len)
        if len(bare) > limit:
            log.debug("teacher scaffolding %d > %d tokens: keeping the end", len(bare), limit)
            return full[-limit:]
        too_few, enough, best = 0, privileged_len, bare  # drop counts: too long / fits
        while enough - too_few > 1:
            mid = (too_few + enough) // 2
            ids = encode_dropping(mid)
            if len(ids) <= limit:
                enough, best = mid, ids
            else:
                too_few = mid
        log.debug("teacher context %d > %d tokens: dropped %d chars", len(full), limit, enough)
        return best

    def _drop_left(self, slots: _Slots, n: int) -> _Slots:
        """Drop `n` characters from the left of the privileged text, slot by slot in the
        order the reprompt template shows them. A filled slot stays filled (maybe "")."""
        template = self.cfg.reprompt_template
        order = sorted(["solution", "feedback"], key=lambda f: template.find("{" + f + "}"))
        kept = {"solution": slots.solution, "feedback": slots.feedback}
        for name in order:
            value = kept[name]
            if value is None:
                continue
            kept[name] = value[n:]
            n = max(0, n - len(value))
        return _Slots(**kept)
