"""Teacher context construction (docs/algorithm.md "Teacher context")."""

import pydantic
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from trainer.config import ContextConfig
from trainer.context import Attempt, TeacherContextBuilder, render_teacher_texts, strip_thinking

# Bare templates so the expected texts are easy to read.
CFG = ContextConfig(
    reprompt_template="Q:{prompt}|{solution}|{feedback}|",
    solution_template="S:{solution}",
    feedback_template="F:{feedback}",
)

FAIL = Attempt("wrong", 0.0, "expected 7")
FAIL_SILENT = Attempt("wrong", 0.0, None)
WIN = Attempt("right", 1.0, None)


def cfg(**changes) -> ContextConfig:
    return CFG.model_copy(update=changes)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A character-level tokenizer built in memory (no network)."""
    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "<unk>": 3}
    for c in [chr(i) for i in range(32, 127)] + ["\n"]:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )


def chat_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = char_tokenizer()
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}"
    )
    return tokenizer


def test_failed_attempt_gets_successful_sibling_and_not_its_own_response():
    texts = render_teacher_texts("2+5", [FAIL, WIN], cfg(use_feedback=False))
    assert texts[0] == "Q:2+5|S:right||"
    assert "wrong" not in texts[0]


def test_own_success_never_used_and_lone_success_without_feedback_has_no_signal():
    texts = render_teacher_texts("p", [FAIL_SILENT, WIN], CFG)
    assert texts[1] is None
    two_wins = render_teacher_texts("p", [Attempt("a", 1.0, None), Attempt("b", 1.0, None)], CFG)
    assert two_wins == ["Q:p|S:b||", "Q:p|S:a||"]


def test_own_success_used_when_self_reprompt_allowed():
    texts = render_teacher_texts("p", [FAIL_SILENT, WIN], cfg(dont_reprompt_on_self_success=False))
    assert texts == ["Q:p|S:right||", "Q:p|S:right||"]


def test_feedback_only_without_sibling_by_default():
    alone = render_teacher_texts("p", [FAIL, FAIL_SILENT], CFG)
    assert alone == ["Q:p||F:expected 7|", None]
    with_sibling = render_teacher_texts("p", [FAIL, WIN], CFG)
    assert with_sibling[0] == "Q:p|S:right||"


def test_feedback_alongside_sibling_when_not_exclusive():
    texts = render_teacher_texts("p", [FAIL, WIN], cfg(feedback_only_without_solution=False))
    assert texts[0] == "Q:p|S:right|F:expected 7|"


def test_blank_feedback_or_disabled_feedback_gives_no_signal():
    assert render_teacher_texts("p", [Attempt("x", 0.0, "  \n")], CFG) == [None]
    assert render_teacher_texts("p", [FAIL], cfg(use_feedback=False)) == [None]


def test_ground_truth_used_only_when_allowed():
    group = [FAIL_SILENT]
    assert render_teacher_texts("p", group, CFG, ground_truth="7") == [None]
    allowed = cfg(use_ground_truth=True)
    assert render_teacher_texts("p", group, allowed, ground_truth="7") == ["Q:p|S:7||"]
    assert render_teacher_texts("p", [FAIL_SILENT, WIN], allowed, ground_truth="7")[0] == (
        "Q:p|S:right||"
    )


def test_demonstration_used_after_ground_truth_and_only_when_enabled():
    group = [FAIL_SILENT]
    assert render_teacher_texts("p", group, CFG, demonstration="demo") == ["Q:p|S:demo||"]
    both = render_teacher_texts("p", group, cfg(use_ground_truth=True), "7", "demo")
    assert both == ["Q:p|S:7||"]
    off = cfg(use_demonstration=False)
    assert render_teacher_texts("p", group, off, demonstration="demo") == [None]


def test_think_blocks_stripped_from_sibling():
    win = Attempt("<think>try 3+4</think>\n7<think>check", 1.0, None)
    assert render_teacher_texts("p", [FAIL_SILENT, win], CFG)[0] == "Q:p|S:7||"
    assert strip_thinking("started in the prompt</think> 7") == "7"
    assert strip_thinking("<think>never closed") == ""
    assert strip_thinking("a <think>x</think>b") == "a b"
    kept = render_teacher_texts("p", [FAIL_SILENT, win], cfg(strip_thinking=False))[0]
    assert "<think>try 3+4</think>" in kept


def test_sibling_that_is_only_thinking_is_skipped():
    group = [FAIL_SILENT, Attempt("<think>hmm", 1.0, None), Attempt("7", 1.0, None)]
    assert render_teacher_texts("p", group, CFG)[0] == "Q:p|S:7||"


def test_success_threshold_respected():
    group = [FAIL_SILENT, Attempt("close", 0.6, None)]
    assert render_teacher_texts("p", group, CFG)[0] is None
    assert render_teacher_texts("p", group, cfg(success_threshold=0.5))[0] == "Q:p|S:close||"


def test_literal_braces_in_values_survive():
    attempt = Attempt("x", 0.0, 'got {"a": {x}} expected {prompt}')
    text = render_teacher_texts("f({y})", [attempt], CFG)[0]
    assert text == 'Q:f({y})||F:got {"a": {x}} expected {prompt}|'


def test_escaped_braces_in_template_render_literally():
    c = cfg(reprompt_template="{{json}} {prompt}{feedback}")
    assert render_teacher_texts("p", [FAIL], c) == ["{json} pF:expected 7"]


@pytest.mark.parametrize(
    "changes",
    [
        {"reprompt_template": "{solution}{feedback}"},  # no {prompt}
        {"reprompt_template": "{prompt}"},  # nothing privileged can appear
        {"reprompt_template": "{prompt}{solution}{answer}"},  # unknown field
        {"reprompt_template": "{prompt}{solution} {"},  # unbalanced brace
        {"solution_template": "A correct solution:"},  # no {solution}
        {"solution_template": "{solution}{feedback}"},  # unknown here
        {"feedback_template": "{feedback!r}"},  # conversion
        {"feedback_template": "{0}"},  # positional
    ],
)
def test_bad_template_rejected_by_context_config(changes):
    with pytest.raises(pydantic.ValidationError):
        ContextConfig(**changes)
    with pytest.raises(pydantic.ValidationError):  # assignment is validated too
        setattr(ContextConfig(), *next(iter(changes.items())))


def test_plain_encoding_prepends_bos_and_matches_student_and_teacher():
    tok = char_tokenizer()
    builder = TeacherContextBuilder(tok, CFG)
    assert builder.student_prompt_ids("ab") == [
        tok.bos_token_id,
        *tok.convert_tokens_to_ids(["a", "b"]),
    ]
    (teacher,) = builder.teacher_prompt_ids("ab", [FAIL])
    assert tok.decode(teacher) == "<bos>Q:ab||F:expected 7|"


def test_chat_template_applied_identically_to_student_and_teacher():
    tok = chat_tokenizer()
    builder = TeacherContextBuilder(tok, CFG)
    student = builder.student_prompt_ids("2+5")
    teacher, none = builder.teacher_prompt_ids("2+5", [FAIL, FAIL_SILENT])
    assert none is None
    assert tok.decode(student) == "<bos>[user]2+5\n[assistant]"
    assert tok.decode(teacher) == "<bos>[user]Q:2+5||F:expected 7|\n[assistant]"
    assert all(isinstance(t, int) for t in student + teacher)


def test_truncation_keeps_prompt_and_end_of_privileged_part_within_limit():
    tok = chat_tokenizer()
    c = cfg(feedback_only_without_solution=False, max_reprompt_tokens=60)
    long_solution = "".join(f"step{i};" for i in range(40)) + "ANSWER=7"
    group = [Attempt("x", 0.0, "FEEDBACK-END"), Attempt(long_solution, 1.0, None)]
    ids = TeacherContextBuilder(tok, c).teacher_prompt_ids("2+5", group)[0]
    text = tok.decode(ids)
    assert len(ids) == 60  # character-level: the cut uses the whole budget
    assert text.startswith("<bos>[user]Q:2+5|S:")  # prompt and scaffolding intact
    assert text.endswith("ANSWER=7|F:FEEDBACK-END|\n[assistant]")  # end of privileged part
    assert "step0;" not in text  # its beginning was dropped


@pytest.mark.parametrize(
    ("limit", "expected"),
    [
        (16, "<bos>Q:p|S:sol|F:fb|"),  # fits: untouched
        (14, "<bos>Q:p|S:l|F:fb|"),  # the solution (left of the feedback) is cut first
        (12, "<bos>Q:p|S:|F:b|"),  # then the feedback
        (11, "<bos>Q:p|S:|F:|"),  # only the scaffolding fits
        (8, "ol|F:fb|"),  # scaffolding too long: the end of the full context
    ],
)
def test_truncation_order_and_limit(limit, expected):
    c = cfg(feedback_only_without_solution=False, max_reprompt_tokens=limit)
    group = [Attempt("x", 0.0, "fb"), Attempt("sol", 1.0, None)]
    ids = TeacherContextBuilder(char_tokenizer(), c).teacher_prompt_ids("p", group)[0]
    assert char_tokenizer().decode(ids) == expected
    assert len(ids) == limit


def test_truncation_follows_template_order_of_slots():
    c = cfg(
        reprompt_template="{prompt}{feedback}{solution}",
        feedback_only_without_solution=False,
        max_reprompt_tokens=len("_pF:S:sol"),  # one token per character, "_" for <bos>
    )
    group = [Attempt("x", 0.0, "fb"), Attempt("sol", 1.0, None)]
    ids = TeacherContextBuilder(char_tokenizer(), c).teacher_prompt_ids("p", group)[0]
    assert char_tokenizer().decode(ids) == "<bos>pF:S:sol"
