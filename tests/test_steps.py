import pytest
from hypothesis import given
from hypothesis import strategies as st

from psr.steps import (
    StepFormatError, is_final, join_steps, prefix_text, renumber, segment_solution, split_steps, strip_marker,
)

# step contents: no leading/trailing whitespace, no embedded "\nStep" marker
content = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
                  min_size=1, max_size=40).map(str.strip).filter(lambda s: s and "Step" not in s and "\n" not in s)


@given(st.lists(content, min_size=1, max_size=8))
def test_split_join_is_identity(steps):
    assert split_steps(join_steps(steps)) == steps


@given(st.lists(content, min_size=1, max_size=8))
def test_numbering_is_always_one_to_n(steps):
    text = join_steps(steps)
    numbers = [int(line.split(":")[0].split()[1]) for line in text.split("\n") if line.startswith("Step ")]
    assert numbers == list(range(1, len(steps) + 1))


def test_renumber_fixes_gaps():
    assert renumber("Step 1: a\nStep 3: b\nStep 7: c") == "Step 1: a\nStep 2: b\nStep 3: c"


@pytest.mark.parametrize("bad", ["", "   ", "no markers here", "preamble\nStep 1: x"])
def test_bad_solutions_raise_clear_errors(bad):
    with pytest.raises(StepFormatError):
        split_steps(bad)


def test_is_final_and_prefix():
    assert is_final("The answer is \\boxed{4}.") and not is_final("2 + 2 = 4")
    assert prefix_text(["a", "b"]) == "Step 1: a\nStep 2: b\n"
    assert prefix_text([]) == ""


def test_strip_marker_drops_marker_and_next_step():
    assert strip_marker("Step 3: 4 + 5 = 9\nStep 4: more") == "4 + 5 = 9"
    assert strip_marker("4 + 5 = 9") == "4 + 5 = 9"
    assert strip_marker("\nStep 2:  x = 1 ") == "x = 1"


def test_segment_gsm8k_answer_keeps_content_and_boxes_final():
    sol = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether.\n#### 1,072"
    steps = segment_solution(sol)
    assert steps[0] == "Natalia sold 48/2 = <<48/2=24>>24 clips in May."
    assert steps[-1] == "The answer is \\boxed{1072}."
    assert len(steps) == 3


def test_segment_math_solution_keeps_display_math_together():
    sol = "We have\n$$x^2 = 4,\nx = 2.$$\nSo the answer is $\\boxed{2}$."
    steps = segment_solution(sol)
    assert any("$$x^2 = 4, x = 2.$$" in s for s in steps)
    assert is_final(steps[-1])
    assert "".join(steps).replace(" ", "") == sol.replace("\n", "").replace(" ", "")


def test_segment_rejects_empty():
    with pytest.raises(StepFormatError):
        segment_solution("  \n ")
