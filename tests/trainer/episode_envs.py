"""Scripted tool environments and a scripted sampler for the episode tests (plumbing).

`Scripted` is a small `ToolEnvironment` with one `lookup` tool; `Nudging` also answers
a turn without a call with an observation while it has nudges left, so that the tiny
model (which does not call tools by itself) plays multi-turn episodes. `ScriptSampler`
plays scripted turns with made-up log-probs.
"""

from __future__ import annotations

from collections.abc import Callable

from envs.base import Score, Task, Verdict
from envs.tools.base import Episode, ToolEnvConfig, ToolEnvironment, Turn
from envs.tools.calls import find_call, format_call, observation
from envs.tools.tool import tool
from trainer.sampler import Completion

DOCS = {"kibo": "4821", "mupa": "1234"}
TASKS = [Task(f"code-{n}", f"What is the code of {n}?\n", reference=c) for n, c in DOCS.items()]
CALL = format_call("lookup", {"query": "kibo"})
OBS = observation("kibo: 4821")
EOS = "<eos>"  # at the end of a scripted turn: the sampler emitted EOS


@tool
def lookup(query: str) -> str:
    """Find the document about a name."""
    return f"{query}: {DOCS[query]}" if query in DOCS else f"no document matches {query!r}"


class Scripted(ToolEnvironment):
    """Answer the code of a name; `lookup` finds it (plain prompt: the task only)."""

    name = "scripted_lookup"

    def __init__(self, **config) -> None:
        super().__init__(ToolEnvConfig(describe_tools=False, **config))

    def dataset(self, split):
        return TASKS

    def tools(self):
        return [lookup]

    async def judge(self, task: Task, answer: str) -> Score:
        if task.reference in answer:
            return Score(1.0, Verdict.ok)
        return Score(0.0, Verdict.wrong_answer, f"The answer {answer.strip()!r} is wrong.")


class NudgingEpisode(Episode):
    """Answers a turn without a call with an observation while nudges are left."""

    async def step(self, turn_text: str) -> Turn:
        if find_call(turn_text) is None and self.turns < self.env.nudges:
            self.turns += 1
            return Turn(observation("error: call lookup"), done=False)
        return await super().step(turn_text)


class Nudging(Scripted):
    def __init__(self, nudges: int = 2, **config) -> None:
        super().__init__(**config)
        self.nudges = nudges

    def start(self, task: Task) -> Episode:
        return NudgingEpisode(self, task)


class ScriptSampler:
    """Plays `script(context, row)` as each turn (plumbing only): the turn's tokens with
    made-up log-probs -0.01, -0.02, ...; an `<eos>` suffix becomes the EOS token; a turn
    longer than `max_new_tokens` is cut there (truncated)."""

    def __init__(self, tokenizer, script: Callable[[str, int], str]) -> None:
        self.tokenizer, self.script = tokenizer, script
        self.calls: list[dict] = []

    def sample(self, prompts, n, params, *, greedy=False, generator=None):
        self.calls.append(
            {"prompts": [list(p) for p in prompts], "params": params, "greedy": greedy}
        )
        tok, out = self.tokenizer, []
        for row, prompt in enumerate(prompts):
            text = self.script(tok.decode(prompt, skip_special_tokens=True), row)
            ids = tok(text.removesuffix(EOS), add_special_tokens=False)["input_ids"]
            ids += [tok.eos_token_id] if text.endswith(EOS) else []
            kept = ids[: params.max_new_tokens]
            logprobs = [-0.01 * (i + 1) for i in range(len(kept))]
            out.append([Completion(kept, logprobs, truncated=kept[-1] != tok.eos_token_id)] * n)
        return out
