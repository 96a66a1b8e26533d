"""Finding the program in a response: the last fenced Python block.

A response whose last code fence is opened but never closed was most likely cut off
by the token limit; the environment cannot see the sampler's truncation flag, so the
open fence is how it tells a truncated answer from one that has no code at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL)
_FENCE = re.compile(r"^\s*```+\s*([\w+-]*)")
PYTHON_TAGS = {"python", "py", "python3"}


@dataclass(frozen=True)
class Extracted:
    """The code of a response, or why there is none (`missing` / `truncated`)."""

    code: str | None
    truncated: bool = False

    @property
    def missing(self) -> bool:
        return self.code is None and not self.truncated


def extract_code(response: str) -> Extracted:
    """The last ```python block (else the last untagged ``` block) of a response."""
    text = _THINK.sub("", response)
    blocks: list[tuple[str, str]] = []  # (language tag, code)
    tag: str | None = None  # the open fence's tag, None when outside a block
    lines: list[str] = []
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if tag is None:
            if fence:
                tag, lines = fence.group(1).lower(), []
        elif fence and not fence.group(1):
            blocks.append((tag, "\n".join(lines) + "\n"))
            tag = None
        else:
            lines.append(line)
    if tag is not None and (tag in PYTHON_TAGS or not tag):
        return Extracted(code=None, truncated=True)
    tagged = [code for t, code in blocks if t in PYTHON_TAGS]
    untagged = [code for t, code in blocks if not t]
    chosen = tagged or untagged
    if not chosen or not chosen[-1].strip():
        return Extracted(code=None)
    return Extracted(code=chosen[-1])
