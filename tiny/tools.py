"""The tool-use corpus of `tiny-tools`: episodes of the `lookup` task (envs/tools/lookup.py).

Every document is an episode played through the environment itself, so its text is
exactly what the trainer samples and the environment answers: the plain student
prompt, then model turns and `<tool_response>` observations. The loss covers the
model's own tokens only; the observations are masked, as in training (docs/algorithm.md
"Aggregation and masks"). A turn that calls a tool is trained to end with EOS where the observation
begins, as a chat model ends its turn after a call; the trainer cuts the turn after
`</tool_call>` anyway, so that EOS is never part of an episode, it only stops sampling.

The corpus gives self-distillation room to work (docs/algorithm.md "Teacher context"):
- *plain* episodes (the student prompt alone) use the tool reliably only for names
  whose first letter is in a small set (about a quarter of names). For the other
  names they mostly answer at once with a code made up from the name (a confident
  hallucination: one made-up code per name), now and then call the tool with a
  misspelt name, and only sometimes use the tool correctly. Alone the model thus
  succeeds on a minority of held-out names, yet most groups of samples hold a success;
- *hinted* episodes (a teacher context holding a successful sibling's transcript, or
  the feedback on a failed attempt, rendered by the project's own context builder from
  the default templates) always use the tool correctly.

Copying a name from the prompt into the call is what a 0.67M-parameter model learns
slowest, and it learns it one context layout at a time. Pretraining therefore starts
from `tiny` (whose arithmetic pretraining taught it to copy digits from a hint) and
runs in three phases: correct plain episodes, then correct hinted episodes, then the
mixture above.

The names and codes come from the environment's generator with a seed of their own,
and leave out every name of the collections `lookup` builds with its default seed
(`HELD_OUT_DOCUMENTS`), so that no training or held-out name of a run is seen here.
"""

from __future__ import annotations

import asyncio
import logging
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch

from envs.base import Score, Task
from envs.tools.calls import CLOSE, format_call
from envs.tools.lookup import CONSONANTS, VOWELS, LookupConfig, LookupEnv
from tiny.pretrain import IGNORE, Corpus, Example, PretrainConfig, collate, pretrain
from trainer.config import ContextConfig
from trainer.context import Attempt, encode_prompt, render_teacher_texts

log = logging.getLogger(__name__)

CORPUS_SEED = 1  # seed of the corpus collection (runs use seed 0)
HELD_OUT_DOCUMENTS = 4096  # names of any seed-0 collection up to this size stay out
EPISODE_TOKENS = 160  # response budget of an episode (a correct one takes about 110)


@dataclass
class ToolCorpusConfig:
    documents: int = 16_384  # names in the corpus collection (before leaving some out)
    plain_fraction: float = 0.5  # mixed phase: documents without a teacher context
    tool_letters_fraction: float = 0.25  # names the plain model handles (by first letter)
    # plain episodes: P(correct tool use), P(misspelt name); the rest answer a made-up code
    handled: tuple[float, float] = (0.85, 0.05)
    unhandled: tuple[float, float] = (0.10, 0.05)
    # mixed phase: plain documents about names the plain model handles (their correct episodes
    # keep copying from the student prompt trained; the policy per name does not change)
    handled_fraction: float = 0.5


Phase = Literal["plain", "hinted", "mixed"]
Kind = Literal["correct", "plain", "sibling", "feedback"]


@dataclass(frozen=True)
class PhaseConfig:
    phase: Phase
    steps: int  # at most
    lr: float
    # stop early once the summed loss of a correct episode (mean over probe documents of the
    # phase, the name and the code are nearly all of it) is below this
    stop_at_loss: float | None = None
    batch_size: int = 8


@dataclass
class ToolPretrainConfig:
    """Each phase is a pretraining run of its own (warmup, cosine decay) on its documents."""

    phases: tuple[PhaseConfig, ...] = (
        PhaseConfig("plain", 900, 1e-3, stop_at_loss=0.5),  # correct episodes, prompt only
        PhaseConfig("hinted", 900, 2e-3, stop_at_loss=0.5),  # correct, after a teacher context
        PhaseConfig("mixed", 800, 1e-3),  # the mixture the module docstring describes
    )
    warmup: int = 50
    seed: int = 0
    corpus: ToolCorpusConfig = field(default_factory=ToolCorpusConfig)


@dataclass(frozen=True)
class Played:
    """A scripted episode as the environment played it: (text, model-written?) pieces."""

    pieces: tuple[tuple[str, bool], ...]
    score: Score

    @property
    def transcript(self) -> str:
        return "".join(text for text, _ in self.pieces)


def call(query: str) -> str:
    return format_call("lookup", {"query": query})


def made_up_code(name: str) -> str:
    """The code a model without the tool 'remembers': a function of the name, so that the
    hallucination is confident (one answer per name), not spread over all codes."""
    return "".join(str((ord(c) - ord("a")) % 10) for c in (name * 4)[:4])


def misspell(name: str, rng: random.Random) -> str:
    """`name` with one letter replaced by another of the same kind (consonant or vowel)."""
    i = rng.randrange(len(name))
    pool = VOWELS if name[i] in VOWELS else CONSONANTS
    return name[:i] + rng.choice([c for c in pool if c != name[i]]) + name[i + 1 :]


def tool_letters(tasks: Sequence[Task], fraction: float) -> frozenset[str]:
    """First letters, taken alphabetically, covering about `fraction` of the names."""
    firsts = [t.data["name"][0] for t in tasks]
    chosen: set[str] = set()
    for letter in string.ascii_lowercase:
        if sum(f in chosen for f in firsts) >= fraction * len(firsts):
            break
        chosen.add(letter)
    return frozenset(chosen)


def play(env: LookupEnv, task: Task, *turns: str) -> Played:
    """Step scripted model turns through the environment."""

    async def go() -> Played:
        episode = env.start(task)
        pieces: list[tuple[str, bool]] = []
        for turn in turns:
            pieces.append((turn, True))
            result = await episode.step(turn)
            if result.done:
                break
            pieces.append((result.observation or "", False))
        return Played(tuple(pieces), await episode.finish())

    return asyncio.run(go())


def correct_episode(env: LookupEnv, task: Task) -> Played:
    return play(env, task, call(task.data["name"]), task.reference)


def failed_episode(env: LookupEnv, task: Task, rng: random.Random) -> Played:
    """A made-up answer, or a call with a misspelt name and then a made-up answer."""
    name = task.data["name"]
    if rng.random() < 0.5:
        return play(env, task, made_up_code(name))
    return play(env, task, call(misspell(name, rng)), made_up_code(name))


def hinted_context(env: LookupEnv, task: Task, rng: random.Random, sibling: bool) -> str:
    """A teacher context for `task`, as training builds it (default templates): a
    successful sibling's transcript, or else the feedback on a failed attempt (the
    student's own attempt is never shown, docs/algorithm.md "Teacher context")."""
    failed = failed_episode(env, task, rng)
    attempts = [Attempt(failed.transcript, failed.score.reward, failed.score.feedback)]
    if sibling:
        attempts.append(Attempt(correct_episode(env, task).transcript, 1.0, None))
    text = render_teacher_texts(env.prompt(task), attempts, ContextConfig())[0]
    assert text is not None
    return text


def encode_episode(tokenizer, context: str, played: Played) -> Example:
    """Token ids and labels: the model's pieces are trained on, the context and the
    observations are not, except that a turn ending in a call is taught to stop there."""
    ids = encode_prompt(tokenizer, context)
    labels = [IGNORE] * len(ids)
    after_call = False
    for text, by_model in played.pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        piece_labels = list(piece) if by_model else [IGNORE] * len(piece)
        if after_call and not by_model:
            piece_labels[0] = tokenizer.eos_token_id
        after_call = by_model and text.endswith(CLOSE)
        ids += piece
        labels += piece_labels
    return ids + [tokenizer.eos_token_id], labels + [tokenizer.eos_token_id]


class ToolCorpus:
    """Pretraining documents of the three phases (see the module docstring)."""

    def __init__(self, cfg: ToolCorpusConfig | None = None) -> None:
        self.cfg = cfg or ToolCorpusConfig()
        self.env = LookupEnv(
            LookupConfig(documents=self.cfg.documents, eval_size=1, seed=CORPUS_SEED)
        )
        seen_by_runs = set(LookupEnv(LookupConfig(documents=HELD_OUT_DOCUMENTS)).codes)
        self.tasks = [t for t in self.env.dataset("train") if t.data["name"] not in seen_by_runs]
        self.letters = tool_letters(self.tasks, self.cfg.tool_letters_fraction)
        self.handled_tasks = [t for t in self.tasks if self.handled(t)]
        self.unhandled_tasks = [t for t in self.tasks if not self.handled(t)]

    def handled(self, task: Task) -> bool:
        """Whether the plain model is taught to use the tool for this name."""
        return task.data["name"][0] in self.letters

    def plain_episode(self, task: Task, rng: random.Random) -> Played:
        good, misspelt = self.cfg.handled if self.handled(task) else self.cfg.unhandled
        u, name = rng.random(), task.data["name"]
        if u < good:
            return correct_episode(self.env, task)
        if u < good + misspelt:  # a misspelt name finds nothing; the answer is made up
            return play(self.env, task, call(misspell(name, rng)), made_up_code(name))
        return play(self.env, task, made_up_code(name))

    def document(self, kind: Kind, rng: random.Random, tokenizer) -> Example:
        """One document: token ids and labels. `correct`: a correct episode after the student
        prompt; `plain`: an episode the plain policy above plays; `sibling` / `feedback`: a
        correct episode after a teacher context of that kind."""
        env = self.env
        if kind == "plain":
            handled = rng.random() < self.cfg.handled_fraction
            task = rng.choice(self.handled_tasks if handled else self.unhandled_tasks)
        else:
            task = rng.choice(self.tasks)
        if kind == "correct":
            context, played = env.prompt(task), correct_episode(env, task)
        elif kind == "plain":
            context, played = env.prompt(task), self.plain_episode(task, rng)
        else:
            context = hinted_context(env, task, rng, sibling=kind == "sibling")
            played = correct_episode(env, task)
        return encode_episode(tokenizer, context, played)

    def example(self, phase: Phase, rng: random.Random, tokenizer, step: int):
        """A document of `phase`. The teacher contexts of one step are all of one kind
        (sibling on odd steps), which keeps the padding of a batch small."""
        cfg = self.cfg
        hinted: Kind = "sibling" if step % 2 else "feedback"
        if phase == "plain":
            kind: Kind = "correct"
        elif phase == "hinted":
            kind = hinted
        else:
            kind = "plain" if rng.random() < cfg.plain_fraction else hinted
        return self.document(kind, rng, tokenizer)


PROBED: dict[Phase, tuple[Kind, ...]] = {
    "plain": ("correct",),
    "hinted": ("sibling", "feedback"),
    "mixed": ("correct", "sibling", "feedback"),
}


def pretrain_tools(
    model, tokenizer, cfg: ToolPretrainConfig, on_step=None, max_steps: int | None = None
) -> int:
    """Pretrain `model` phase by phase; `max_steps` caps each phase. Returns the steps taken."""
    corpus = ToolCorpus(cfg.corpus)
    done = 0
    for i, phase in enumerate(cfg.phases):
        steps = phase.steps if max_steps is None else min(phase.steps, max_steps)
        run = PretrainConfig(
            steps=steps,
            batch_size=phase.batch_size,
            lr=phase.lr,
            warmup=min(cfg.warmup, steps),
            seed=cfg.seed + i,
            stop_at_plain_accuracy=None,
        )

        def example(rng, tokenizer, step, phase=phase.phase):
            return corpus.example(phase, rng, tokenizer, step)

        def report(step, loss, offset=done):
            if on_step:
                on_step(offset + step, loss)

        stop = None
        if phase.stop_at_loss is not None:
            rng = random.Random(f"probe/{cfg.seed}")
            probes = {
                k: [corpus.document(k, rng, tokenizer) for _ in range(16)]
                for k in PROBED[phase.phase]
            }
            stop = partial(_learned, probes=probes, threshold=phase.stop_at_loss)
        done += pretrain(model, tokenizer, run, Corpus(example, stop), report)
        log.info("tool corpus: %s phase done after %d steps in all", phase.phase, done)
    return done


@torch.no_grad()
def _learned(model, tokenizer, *, probes, threshold: float) -> bool:
    """Whether, for every kind of probe document, the summed loss of a correct episode
    after its first token (the choice to call the tool or not, which the plain policy
    leaves open) is below `threshold`, as a mean over the documents."""
    model.eval()
    losses = {}
    for kind, docs in probes.items():
        ids, mask, labels = collate(docs, tokenizer.pad_token_id)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
        target = labels[:, 1:]
        nll = -logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scored = (target != IGNORE).long()
        after_first = scored.cumsum(-1) > 1
        losses[kind] = (nll * scored * after_first).sum(-1).mean().item()
    log.info(
        "tool corpus probe (nats per episode): %s", {k: round(v, 3) for k, v in losses.items()}
    )
    return max(losses.values()) < threshold
