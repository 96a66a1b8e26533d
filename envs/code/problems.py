"""A procedurally generated problem set, bundled so that tests and demos run offline.

Each family is a small problem with seeded constants (the divisor, the letters to
count, ...). Its reference solution is one function's source; the expected outputs
come from running that trusted source here, and the same function, wrapped to read
stdin or left as a function, is the task's reference solution. A task asks either for
a stdin/stdout program or for a named function, with generated tests of that kind.
"""

from __future__ import annotations

import hashlib
import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from envs.base import Task

ArgKind = Literal["ints", "text", "int"]
ReturnKind = Literal["int", "float", "str", "bool", "list"]

READERS: dict[ArgKind, tuple[str, str]] = {  # how a program reads its argument; the prompt says
    "ints": (
        "data = sys.stdin.read().split()\nx = [int(t) for t in data[1:]]",
        "a list of integers (the first line holds their count n, the second the n numbers)",
    ),
    "text": ("x = sys.stdin.readline().rstrip('\\n')", "one line of text"),
    "int": ("x = int(sys.stdin.read())", "one integer n"),
}
ARG_NOUN: dict[ArgKind, str] = {
    "ints": "a list of integers",
    "text": "a string",
    "int": "an integer n",
}
WRITERS: dict[ReturnKind, tuple[str, str]] = {  # how a program prints its answer; the prompt says
    "int": ("print(y)", ""),
    "float": ("print(y)", ""),
    "str": ("print(y)", ""),
    "bool": ("print(y)", " (True or False)"),
    "list": ("print(' '.join(str(v) for v in y))", " (separated by spaces, on one line)"),
}


@dataclass(frozen=True)
class Family:
    name: str  # also the function's name
    arg: ArgKind
    returns: ReturnKind
    what: str  # what to compute, formatted with the constants
    source: str  # `def {name}(x):` ..., formatted with the constants
    constants: Callable[[random.Random], dict[str, Any]]
    argument: Callable[[random.Random, dict[str, Any]], Any]  # one random test input


def _ints(rng: random.Random, low: int = -20, high: int = 20, min_len: int = 0) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(min_len, 8))]


def _text(rng: random.Random, alphabet: str = string.ascii_lowercase + "   ") -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 16))).strip() or "a"


FAMILIES = [
    Family(
        "sum_divisible", "ints", "int",
        "the sum of the numbers that are divisible by {k}",
        "def sum_divisible(x):\n    return sum(v for v in x if v % {k} == 0)\n",
        lambda r: {"k": r.randint(2, 9)},
        lambda r, c: _ints(r),
    ),
    Family(
        "reverse_case",
        "text",
        "str",
        "the string reversed, converted to {case} case, with every '{c}' removed",
        "def reverse_case(x):\n    return x[::-1].{case}().replace({c!r}, '')\n",
        lambda r: {"case": r.choice(["upper", "lower"]), "c": r.choice("aeiou ")},
        lambda r, c: _text(r, string.ascii_letters + " "),
    ),
    Family(
        "count_letters", "text", "int",
        "how many characters of the string are one of the letters '{letters}'",
        "def count_letters(x):\n    return sum(1 for ch in x if ch in {letters!r})\n",
        lambda r: {"letters": "".join(sorted(r.sample("aeioulnrst", r.randint(2, 5))))},
        lambda r, c: _text(r),
    ),
    Family(
        "fizz_words", "int", "list",
        "for every i from 1 to n: '{a_word}{b_word}' if i is divisible by both {a} and {b}, "
        "'{a_word}' if only by {a}, '{b_word}' if only by {b}, else i itself",
        "def fizz_words(x):\n    out = []\n    for i in range(1, x + 1):\n"
        "        word = ({a_word!r} if i % {a} == 0 else '') + ({b_word!r} if i % {b} == 0 else '')\n"
        "        out.append(word or str(i))\n    return out\n",
        lambda r: {
            "a": (a := r.randint(2, 5)),
            "b": r.choice([b for b in range(2, 8) if b != a]),
            "a_word": r.choice(["Fizz", "Foo", "Ping"]),
            "b_word": r.choice(["Buzz", "Bar", "Pong"]),
        },
        lambda r, c: r.randint(1, 20),
    ),
    Family(
        "best_pair", "ints", "int",
        "the largest {op} of two adjacent numbers in the list (the list has at least two numbers)",
        "def best_pair(x):\n    return max({expr} for a, b in zip(x, x[1:]))\n",
        lambda r: r.choice([{"op": "sum", "expr": "a + b"}, {"op": "product", "expr": "a * b"}]),
        lambda r, c: _ints(r, min_len=2),
    ),
    Family(
        "prefix_mod", "ints", "list",
        "the running sums of the list (the i-th is the sum of the first i+1 numbers), each modulo {m}",
        "def prefix_mod(x):\n    out, total = [], 0\n    for v in x:\n"
        "        total += v\n        out.append(total % {m})\n    return out\n",
        lambda r: {"m": r.randint(3, 100)},
        lambda r, c: _ints(r, 0, 99, min_len=1),
    ),
    Family(
        "mean_above", "ints", "float",
        "the average of the numbers greater than {t}, or 0.0 when there are none",
        "def mean_above(x):\n    kept = [v for v in x if v > {t}]\n"
        "    return sum(kept) / len(kept) if kept else 0.0\n",
        lambda r: {"t": r.randint(-5, 10)},
        lambda r, c: _ints(r),
    ),
    Family(
        "palindrome_without", "text", "bool",
        "whether the string reads the same backwards after removing every '{c}'",
        "def palindrome_without(x):\n    s = x.replace({c!r}, '')\n    return s == s[::-1]\n",
        lambda r: {"c": r.choice("xyz ")},
        lambda r, c: r.choice([_text(r, "abxyz "), (w := _text(r, "abz")) + w[::-1]]),
    ),
    Family(
        "kth_largest", "ints", "int",
        "the {k}-th largest distinct value in the list, or -1 when it has fewer than {k} distinct values",
        "def kth_largest(x):\n    values = sorted(set(x), reverse=True)\n"
        "    return values[{k} - 1] if len(values) >= {k} else -1\n",
        lambda r: {"k": r.randint(1, 4)},
        lambda r, c: _ints(r, -9, 9),
    ),
    Family(
        "caesar", "text", "str",
        "the string with every lowercase letter shifted {k} places forward in the alphabet "
        "(wrapping from z to a) and every other character unchanged",
        "def caesar(x):\n    return ''.join(chr((ord(ch) - 97 + {k}) % 26 + 97) if 'a' <= ch <= 'z' else ch"
        " for ch in x)\n",
        lambda r: {"k": r.randint(1, 25)},
        lambda r, c: _text(r, string.ascii_lowercase + "AB !"),
    ),
    Family(
        "digit_sum_count", "int", "int",
        "how many integers from 1 to n have a digit sum divisible by {k}",
        "def digit_sum_count(x):\n    return sum(1 for i in range(1, x + 1)"
        " if sum(int(d) for d in str(i)) % {k} == 0)\n",
        lambda r: {"k": r.randint(2, 7)},
        lambda r, c: r.randint(1, 500),
    ),
]  # fmt: skip


def stdin_program(family: Family, function_source: str) -> str:
    read, _ = READERS[family.arg]
    write, _ = WRITERS[family.returns]
    return f"import sys\n\n{function_source}\n{read}\ny = {family.name}(x)\n{write}\n"


def stdin_text(family: Family, value: Any) -> str:
    if family.arg == "ints":
        return f"{len(value)}\n{' '.join(map(str, value))}\n"
    return f"{value}\n"


def stdout_text(family: Family, value: Any) -> str:
    if family.returns == "list":
        return " ".join(map(str, value)) + "\n"
    return f"{value}\n"


def make_problem(family: Family, rng: random.Random, style: str, n_tests: int) -> Task:
    constants = family.constants(rng)
    what = family.what.format(**constants)
    source = family.source.format(**constants)
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # our own reference source, never model output
    solve = namespace[family.name]
    args = [family.argument(rng, constants) for _ in range(n_tests)]
    if style == "stdin":
        _, reads = READERS[family.arg]
        _, shape = WRITERS[family.returns]
        prompt = (
            f"Write a Python program that reads {reads} from standard input and prints "
            f"{what}{shape}."
        )
        tests = [
            {"stdin": stdin_text(family, a), "stdout": stdout_text(family, solve(a))} for a in args
        ]
        reference = stdin_program(family, source)
    else:
        prompt = (
            f"Write a Python function `{family.name}(x)` that takes {ARG_NOUN[family.arg]} x "
            f"and returns {what}."
        )
        tests = [{"call": [a], "expected": solve(a)} for a in args]
        reference = source
    how = (
        "Read standard input and print the answer."
        if style == "stdin"
        else (f"Define the function `{family.name}`; do not read input or print.")
    )
    prompt += f" {how} Answer with the complete solution in a ```python code block."
    return Task(
        id=f"gen/{family.name}/{style}/{hashlib.sha1(prompt.encode()).hexdigest()[:10]}",
        prompt=prompt,
        reference=f"```python\n{reference}```",
        data={"tests": tests, "entry_point": family.name if style == "call" else None,
              "style": style, "family": family.name},
    )  # fmt: skip


def generate(seed: int, attempts: int, n_tests: int) -> list[Task]:
    """Distinct problems (by prompt) from `attempts` draws, in a seeded order."""
    tasks: dict[str, Task] = {}
    for i in range(attempts):
        rng = random.Random(f"{seed}/{i}")
        family = FAMILIES[i % len(FAMILIES)]
        task = make_problem(family, rng, rng.choice(["stdin", "call"]), n_tests)
        tasks.setdefault(task.prompt, task)
    return list(tasks.values())
