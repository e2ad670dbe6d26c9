import pytest

from psr.config import PromptParams
from psr.prompts import TemplateError, Templates, parse_score, parse_verdict
from psr.records import EFTRecord


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A is right. [[A]]", "A"),
        ("[[A]] hmm, no: [[B]]", "B"),  # both markers: the last one counts
        ("neither marker", None),
        ("[A] [[C]] [[a]]", None),
        ("", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_parse_verdict_never_raises_on_none():
    assert parse_verdict(None) is None  # type: ignore[arg-type]


@pytest.mark.parametrize("text, expected", [("Score: 4", 4.0), ("Score: 2 ... Score: 5", 5.0),
                                            ("Score: 9", None), ("no score", None), ("Score: 3.5", 3.5)])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_templates_keep_the_papers_format(style):
    t = Templates.from_params(PromptParams(style=style))
    judge = t.judge_prompt("Q?", ["a = 1", "b = 2"], "STEP-A", "STEP-B")
    for marker in ("[Question and Intermediate Reasoning Steps Provided]",
                   "[The Start of Assistant A's Next Reasoning Step]", "[The End of Assistant A's Next Reasoning Step]",
                   "[The Start of Assistant B's Next Reasoning Step]", "[The End of Assistant B's Next Reasoning Step]",
                   "[[A]]", "[[B]]"):
        assert marker in judge
    assert "Q?\nStep 1: a = 1\nStep 2: b = 2" in judge
    assert judge.index("STEP-A") < judge.index("STEP-B")
    r = t.reasoning_prompt("What is 1+1?")
    assert "\\boxed{}" in r and "What is 1+1?" in r
    assert "Score: " in t.srlm_prompt("q", "resp") and "<response>resp</response>" in t.srlm_prompt("q", "resp")


def test_template_override_inline_and_file(tmp_path):
    (tmp_path / "judge.txt").write_text("J {context} | {step_a} | {step_b}")
    t = Templates.from_params(PromptParams(reasoning="R: {question}", judge="file:judge.txt"), tmp_path)
    assert t.reasoning_prompt("q") == "R: q"
    assert t.judge_prompt("q", [], "a", "b") == "J q | a | b"


@pytest.mark.parametrize("bad", ["no fields", "{question} {extra}", "{question"])
def test_template_override_with_wrong_fields_fails(bad):
    with pytest.raises(TemplateError):
        Templates.from_params(PromptParams(reasoning=bad))


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_a_few_shot_judge_prompt_shows_worked_judgments_then_the_pair_to_judge(style):
    t = Templates.from_params(PromptParams(style=style))
    shots = [EFTRecord(id="e1", question="Q1?", previous_steps=[], step_a="x = 1", step_b="x = 2", verdict="A",
                       judgment="x is 1. [[A]]"),
             EFTRecord(id="e2", question="Q2?", previous_steps=["y = 3"], step_a="z = 5", step_b="z = 4", verdict="B",
                       judgment="z is 4. [[B]]")]
    prompt = t.few_shot_judge_prompt(shots, "Q?", ["a = 1"], "STEP-A", "STEP-B")
    asked = t.judge_prompt("Q?", ["a = 1"], "STEP-A", "STEP-B")
    pieces = [t.judge_prompt("Q1?", [], "x = 1", "x = 2"), "x is 1. [[A]]",
              t.judge_prompt("Q2?", ["y = 3"], "z = 5", "z = 4"), "z is 4. [[B]]", asked]
    at = [prompt.index(piece) for piece in pieces]
    assert at == sorted(at) and prompt.endswith(asked)  # each example's judgment after it, the pair to judge last
    assert prompt.count("[The Start of Assistant A's Next Reasoning Step]") == 3
    assert "2 comparisons" in prompt and "Judgment 3" not in prompt  # the answer to the last one is the model's
    assert t.few_shot_judge_prompt([], "Q?", ["a = 1"], "STEP-A", "STEP-B") == asked  # zero-shot: the judge prompt
