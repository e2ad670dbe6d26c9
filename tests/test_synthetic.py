"""The synthetic task: determinism, disjoint splits, exact arithmetic, realistic bad steps, judgments."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from psr.config import ConfigError, Params, PromptParams, TaskParams
from psr.prompts import Templates, parse_score, parse_verdict
from psr.steps import split_steps
from psr.tasks import synthetic as syn
from psr.tasks.data import TaskData, corpus, load_task, write_task

PARAMS = TaskParams(
    min_steps=2, max_steps=4, test_max_steps=5, max_operand=50, n_ift=300, n_eft=600,
    n_eft_test=101, n_test=200, questions_per_iteration=(20, 40, 60), n_srlm_eft=300,
)

# Independent of the module's own regexes: the step format the brief fixes.
EQ = re.compile(r"^(\d+) ([+\-*]) (\d+) = (-?\d+)$")
FINAL = re.compile(r"^The answer is \\boxed\{(\d+)\}\.$")


def _arith(a: int, op: str, b: int) -> int:
    return {"+": a + b, "-": a - b, "*": a * b}[op]


def _eq_ok(step: str) -> bool | None:
    """True/False for a well-formed `a op b = c` step, None for any other step."""
    m = EQ.match(step)
    if not m:
        return None
    a, op, b, c = m.groups()
    return _arith(int(a), op, int(b)) == int(c)


@pytest.fixture(scope="module")
def task() -> TaskData:
    return syn.build_task(PARAMS, seed=0)


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_same_seed_writes_identical_files_and_other_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        write_task(syn.build_task(PARAMS, seed), tmp_path / name)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    expected = {"ift.jsonl", "eft.jsonl", "eft_test.jsonl", "pool_1.jsonl", "pool_2.jsonl",
                "pool_3.jsonl", "test.jsonl", "srlm_eft.jsonl"}
    assert set(a) == expected
    assert a == b
    assert all(a[name] != c[name] for name in expected)


def test_write_load_round_trip_and_stale_pools_removed(tmp_path, task):
    bigger = syn.build_task(PARAMS.model_copy(update={"questions_per_iteration": (5, 5, 5, 5)}), 0)
    write_task(bigger, tmp_path)
    assert (tmp_path / "pool_4.jsonl").exists()
    write_task(task, tmp_path)
    assert not (tmp_path / "pool_4.jsonl").exists()
    assert load_task(tmp_path) == task


def test_sizes_match_params(task):
    assert len(task.ift) == PARAMS.n_ift
    assert len(task.eft) == PARAMS.n_eft
    assert len(task.eft_test) == PARAMS.n_eft_test
    assert len(task.test) == PARAMS.n_test
    assert len(task.srlm_eft) == PARAMS.n_srlm_eft
    assert [len(p) for p in task.pools] == list(PARAMS.questions_per_iteration)


def test_all_question_sets_are_pairwise_disjoint(task):
    sets = {
        "ift": [r.question for r in task.ift],
        "eft": [r.question for r in task.eft],
        "eft_test": [r.question for r in task.eft_test],
        "test": [p.question for p in task.test],
        "srlm": [r.question for r in task.srlm_eft],
        **{f"pool{i}": [q.question for q in pool] for i, pool in enumerate(task.pools)},
    }
    everything = [q for qs in sets.values() for q in qs]
    assert len(everything) == len(set(everything)), "a question repeats within or across splits"
    ids = [r.id for r in task.ift + task.eft + task.eft_test + task.test + task.srlm_eft]
    ids += [q.id for pool in task.pools for q in pool]
    assert len(ids) == len(set(ids))


def test_test_set_has_longer_problems_than_training(task):
    ops = Counter(p.n_ops for p in task.test)
    assert min(ops) == PARAMS.min_steps and max(ops) == PARAMS.test_max_steps
    assert ops[PARAMS.test_max_steps] >= PARAMS.n_test // 10
    assert max(len(r.steps) - 1 for r in task.ift) == PARAMS.max_steps


def _check_solution_chain(question: str, steps: list[str], gold: int | None, max_factor: int) -> None:
    """Every step is `a op b = c` with right arithmetic, chained on the previous result, starting
    from the question's first number, using the k-th sentence's number, ending in the boxed gold."""
    sentences = re.split(r"(?<=[.?]) ", question)
    assert len(sentences) == len(steps) + 1  # start sentence + one per operation + the question
    cur = int(re.findall(r"\d+", sentences[0])[0])
    for k, step in enumerate(steps[:-1]):
        m = EQ.match(step)
        assert m, step
        a, op, b, c = int(m[1]), m[2], int(m[3]), int(m[4])
        assert a == cur, (question, steps)
        assert _arith(a, op, b) == c, step
        sentence = sentences[k + 1]
        if "doubles" in sentence or "triples" in sentence:
            assert (op, b) == ("*", 2 if "doubles" in sentence else 3)
        else:
            assert re.findall(r"\d+", sentence) == [str(b)]
        if op == "*":
            assert 2 <= b <= max_factor
        assert 1 <= c <= 999
        cur = c
    m = FINAL.match(steps[-1])
    assert m and int(m[1]) == cur
    if gold is not None:
        assert cur == gold


def test_ift_and_test_solutions_are_exact(task):
    for r in task.ift:
        _check_solution_chain(r.question, r.steps, None, PARAMS.max_factor)
    for p in task.test:
        _check_solution_chain(p.question, p.steps, int(p.gold), PARAMS.max_factor)
        assert syn.answer_of(p) == int(p.gold) and p.n_ops == len(p.steps) - 1


def test_parse_question_recovers_every_generated_solution(task):
    for p in task.test:
        assert syn.parse_question(p.question).steps() == p.steps
    with pytest.raises(ValueError):
        syn.parse_question("What is 2 + 2?")


def test_eft_verdicts_are_balanced(task):
    for records in (task.eft, task.eft_test):
        counts = Counter(r.verdict for r in records)
        assert set(counts) == {"A", "B"}
        assert abs(counts["A"] - counts["B"]) <= 1
    assert Counter(r.verdict for r in task.eft)["A"] == PARAMS.n_eft // 2


def test_eft_good_step_right_bad_step_wrong_and_kinds_realistic(task):
    kinds = Counter()
    for r in task.eft + task.eft_test:
        reference = syn.parse_question(r.question).steps()
        depth = len(r.previous_steps)
        assert r.previous_steps == reference[:depth]
        good, bad = (r.step_a, r.step_b) if r.verdict == "A" else (r.step_b, r.step_a)
        assert good == reference[depth]
        assert bad != good
        kinds[r.error] += 1
        final_depth = depth == len(reference) - 1
        assert (r.error == "final") == final_depth
        if r.error == "arithmetic":  # same operands and operation, wrong result
            assert _eq_ok(bad) is False and _eq_ok(good) is True
            assert bad.rsplit("=", 1)[0] == good.rsplit("=", 1)[0]
        elif r.error in ("operand", "operation"):  # right arithmetic on the wrong inputs
            assert _eq_ok(bad) is True
            gm, bm = EQ.match(good), EQ.match(bad)
            assert gm[4] != bm[4]
            if r.error == "operation":
                assert (gm[1], gm[3]) == (bm[1], bm[3]) and gm[2] != bm[2]
            else:
                assert gm[2] == bm[2] and (gm[1], gm[3]) != (bm[1], bm[3])
                numbers = set(re.findall(r"\d+", r.question)) | {EQ.match(s)[4] for s in r.previous_steps}
                assert {bm[1], bm[3]} - {gm[1], gm[3]} <= numbers | {"2", "3"}
        elif r.error == "premature":  # boxes the current value before the last operation
            current = EQ.match(r.previous_steps[-1])[4] if r.previous_steps else re.findall(r"\d+", r.question)[0]
            assert FINAL.match(bad)[1] == current and not final_depth
        elif r.error == "final":
            assert int(FINAL.match(bad)[1]) != int(FINAL.match(good)[1])
        else:
            pytest.fail(f"unknown error kind {r.error}")
    assert set(kinds) == set(syn.ERROR_KINDS)
    assert kinds["arithmetic"] >= 0.25 * sum(kinds.values())  # the model's own common errors


def test_eft_judgments_parse_to_the_verdict_and_check_both_steps(task):
    for r in task.eft + task.eft_test:
        assert parse_verdict(r.judgment) == r.verdict
        assert r.judgment.startswith("Next: ")
        good, bad = (r.step_a, r.step_b) if r.verdict == "A" else (r.step_b, r.step_a)
        expected = syn.claim(good)
        # The expected claim is stated before either candidate is mentioned, and both are checked.
        head = r.judgment.split(" A: ")[0]
        assert expected.split()[-1] in head
        assert f"{r.verdict}: {expected} ok." in r.judgment
        other = "B" if r.verdict == "A" else "A"
        assert f"{other}: {syn.claim(bad)} no." in r.judgment
        assert len(r.judgment) < 90


def test_srlm_records_score_and_parse(task):
    scores = Counter()
    for r in task.srlm_eft:
        steps = split_steps(r.response)
        assert parse_score(r.judgment) == r.score
        gold = syn.parse_question(r.question).values()[-1]
        correct = FINAL.match(steps[-1]) and int(FINAL.match(steps[-1])[1]) == gold
        if r.score == 5:
            _check_solution_chain(r.question, steps, gold, PARAMS.max_factor)
            assert "no" not in r.judgment
        else:
            assert r.score in (2, 3)
            assert not correct, "a wrong response must end in a wrong (or no) boxed answer"
            assert syn.boxed_value(steps[-1]) is not None
            first_bad = r.judgment.split(": ", 1)[1].split().index("no,")
            reference = syn.parse_question(r.question).steps()
            assert steps[:first_bad] == reference[:first_bad] and steps[first_bad] != reference[first_bad]
            assert r.score == (2 if first_bad < len(reference) / 2 else 3)
        scores[r.score] += 1
    assert scores[5] == PARAMS.n_srlm_eft // 2 and scores[2] > 0 and scores[3] > 0


def test_check_solution_compares_integers_without_evaluating(task):
    p = task.test[0]
    gold = int(p.gold)
    assert syn.check_solution(p, p.steps)
    assert syn.check_solution(p, "\n".join(p.steps))
    assert syn.check_solution(p, [f"The answer is \\boxed{{ {gold} }}."])
    assert not syn.check_solution(p, p.steps[:-1])
    assert not syn.check_solution(p, [f"The answer is \\boxed{{{gold + 1}}}."])
    assert not syn.check_solution(p, [f"\\boxed{{{gold - 1}+1}}"])
    assert not syn.check_solution(p, [f"\\boxed{{{gold}.5}}"])
    # The last boxed answer counts.
    assert not syn.check_solution(p, [f"\\boxed{{{gold}}}", f"\\boxed{{{gold + 2}}}"])


def test_oracle_judgments_for_model_written_steps():
    q = "Mia has 12 apples. She buys 30 more. Then she multiplies them by 3. How many apples does Mia have now?"
    assert syn.parse_question(q).steps() == ["12 + 30 = 42", "42 * 3 = 126", "The answer is \\boxed{126}."]
    text, verdict = syn.eft_judgment(q, ["12 + 30 = 42"], "42 * 3 = 126", "42 * 3 = 136")
    assert verdict == "A" and parse_verdict(text) == "A" and text.startswith("Next: 42 * 3 = 126.")
    # Local correctness: after a wrong step 1, the right step 2 continues from what was written.
    _, verdict = syn.eft_judgment(q, ["12 + 30 = 43"], "42 * 3 = 126", "43 * 3 = 129")
    assert verdict == "B"
    with pytest.raises(ValueError, match="exactly one"):
        syn.eft_judgment(q, [], "12 + 30 = 42", "Adding: 12 + 30 = 42")
    text, score = syn.srlm_judgment(q, ["12 + 30 = 42", "42 * 3 = 126", "The answer is \\boxed{126}."])
    assert score == 5 and parse_score(text) == 5
    text, score = syn.srlm_judgment(q, ["12 + 30 = 42", "42 * 3 = 128", "The answer is \\boxed{128}."])
    assert text == "Check: ok no, expected 126. Score: 2" and parse_score(text) == 2
    text, score = syn.srlm_judgment(q, ["12 + 30 = 42", "42 * 3 = 126", "The answer is \\boxed{162}."])
    assert text == "Check: ok ok no, expected 126. Score: 3" and score == 3
    _, score = syn.srlm_judgment(q, ["The answer is \\boxed{12}."])
    assert score == 2


@pytest.mark.parametrize("style", ["paper", "compact"])
def test_corpus_covers_prompts_and_targets(task, style):
    templates = Templates.from_params(PromptParams(style=style))
    texts = list(corpus(task, templates))
    joined = "\n".join(texts)
    assert task.eft[0].judgment in joined and task.srlm_eft[0].judgment in joined
    assert templates.reasoning_prompt(task.pools[0][0].question) in texts
    assert "Step 1: " in joined
    assert task.eft_test[0].judgment not in joined  # held-out judgments stay out
    both = list(corpus(task, [templates, Templates.from_params(PromptParams(style="paper"))]))
    assert len(both) == 2 * len(texts)


def test_make_problems_is_deterministic_distinct_and_bounded():
    params = TaskParams(max_operand=20, max_value=200, max_factor=3)
    a = syn.make_problems(3, 150, params, 1, 6, id_prefix="x")
    assert a == syn.make_problems(3, 150, params, 1, 6, id_prefix="x")
    assert a != syn.make_problems(4, 150, params, 1, 6, id_prefix="x")
    assert len({p.question for p in a}) == 150
    assert {p.n_ops for p in a} == set(range(1, 7))
    for p in a:
        _check_solution_chain(p.question, p.steps, int(p.gold), 3)
        assert all(int(c) <= 200 for c in re.findall(r"= (\d+)", " ".join(p.steps)))
    only_add = TaskParams(operations=("+",))
    p = syn.make_problem(random.Random(1), 3, only_add)
    assert all(" + " in s for s in p.steps[:-1])


@pytest.mark.parametrize("overrides, key", [
    ({"max_steps": 1}, "max_steps"),           # max_steps < min_steps
    ({"test_max_steps": 3}, "test_max_steps"),  # shorter than training
    ({"max_value": 10}, "max_value"),          # below max_operand
    ({"max_factor": 1}, "max_factor"),
    ({"operations": ("/",)}, "operations"),
])
def test_bad_knobs_are_rejected(overrides, key):
    with pytest.raises(ValueError, match=key):
        syn.build_task(TaskParams().model_copy(update=overrides), 0)
    with pytest.raises(ConfigError, match=key):
        Params().replace({f"task.{k}": list(v) if isinstance(v, tuple) else v for k, v in overrides.items()})


def test_impossible_requests_fail_clearly():
    tiny_space = TaskParams(min_steps=1, max_steps=1, test_max_steps=1, max_operand=2, operations=("+",),
                            n_ift=0, n_eft=0, n_eft_test=0, n_srlm_eft=0, n_test=20000,
                            questions_per_iteration=(1,))
    with pytest.raises(ValueError, match="distinct"):
        syn.build_task(tiny_space, 0)
    with pytest.raises(ValueError, match="chain"):
        syn.make_problem(random.Random(0), 4, TaskParams(operations=("-",), max_operand=3))
    with pytest.raises(ValueError, match="n_ops"):
        syn.make_problem(random.Random(0), 0, TaskParams())
    with pytest.raises(TypeError):
        syn.make_problem(0, 2, TaskParams())  # type: ignore[arg-type]


PLAIN = PARAMS.model_copy(update={"wording": "plain", "max_operand": 9, "max_value": 60, "max_factor": 3})


def _template_of(sentence: str) -> str:
    """A sentence with its name, pronoun, object and number abstracted away."""
    out = re.sub(r"\d+", "#", sentence)
    out = re.sub(r"\b(She|He)\b", "P", out)
    return out


def test_plain_wording_is_one_regular_sentence_per_operation():
    task = syn.build_task(PLAIN, seed=0)
    problems = [(r.question, r.steps) for r in task.ift] + [(p.question, p.steps) for p in task.test]
    templates: dict[str, set[str]] = {"+": set(), "-": set(), "*": set()}
    names, objects = set(), set()
    for question, steps in problems:
        _check_solution_chain(question, steps, None, PLAIN.max_factor)
        sentences = re.split(r"(?<=[.?]) ", question)
        first = re.match(r"^([A-Z][a-z]+) has (\d+) ([a-z]+)\.$", sentences[0])
        assert first, sentences[0]
        names.add(first[1])
        objects.add(first[3])
        assert sentences[-1] == f"How many {first[3]} does {first[1]} have now?"
        for sentence, step in zip(sentences[1:-1], steps):
            op, b = EQ.match(step)[2], EQ.match(step)[3]
            assert re.findall(r"\d+", sentence) == [b]  # the operand is the sentence's only number
            templates[op].add(_template_of(sentence))
        assert syn.parse_question(question).steps() == steps
    assert all(len(t) == 1 for t in templates.values()), templates
    assert len(set.union(*templates.values())) == 3
    assert names <= set(syn.PLAIN_NAMES) and len(names) > 1
    assert objects <= set(syn.PLAIN_OBJECTS) and len(objects) > 1
    # EFT/SRLM judgments work unchanged on plain questions.
    for r in task.eft[:50]:
        assert parse_verdict(r.judgment) == r.verdict
        assert syn.eft_judgment(r.question, list(r.previous_steps), r.step_a, r.step_b)[1] == r.verdict


def test_varied_wording_is_the_default_and_uses_many_templates(task):
    assert TaskParams().wording == "varied"
    assert syn.build_task(PARAMS.model_copy(update={"wording": "varied"}), 0).test == task.test
    op_templates = {_template_of(s) for r in task.ift for s in re.split(r"(?<=[.?]) ", r.question)[1:-1]}
    assert len(op_templates) > 6
    plain = syn.build_task(PARAMS.model_copy(update={"wording": "plain"}), 0)
    mean = lambda qs: sum(len(q) for q in qs) / len(qs)  # noqa: E731
    assert mean([r.question for r in plain.ift]) < mean([r.question for r in task.ift])


def test_unknown_wording_is_rejected():
    with pytest.raises(ConfigError, match="wording"):
        Params().replace({"task.wording": "fancy"})


def test_easy_to_hard_knobs_lengthen_judge_data_and_pools_only(task):
    """`eft_max_steps` lengthens the judge's data (EFT, its test split, SRLM EFT) and the pool
    knobs the search questions; the IFT solutions the policy learns from keep the IFT range, and
    the default (0) writes exactly the task it wrote before."""
    hard = syn.build_task(PARAMS.model_copy(update={"eft_max_steps": 6, "pool_min_steps": 5, "pool_max_steps": 6}), 0)
    ops = lambda q: len(syn.parse_question(q).ops)  # noqa: E731
    assert max(ops(r.question) for r in hard.eft) == 6 and max(ops(r.question) for r in hard.eft_test) == 6
    assert max(ops(r.question) for r in hard.srlm_eft) == 6
    assert {ops(q.question) for pool in hard.pools for q in pool} == {5, 6}
    assert max(len(r.steps) - 1 for r in hard.ift) == PARAMS.max_steps
    assert max(ops(r.question) for r in task.eft) == PARAMS.max_steps
    assert syn.build_task(PARAMS.model_copy(update={"eft_max_steps": 0, "pool_max_steps": 0}), 0) == task
    with pytest.raises(ConfigError, match="eft_max_steps"):
        Params().replace({"task.eft_max_steps": 3})


def test_the_pool_range_changes_the_pools_only_not_the_warm_up_data_or_the_tokenizer(task):
    """A warmed-up M1 (`warmup.shipped`) stays valid when only the search pools move outside the
    IFT range: IFT, EFT, SRLM EFT, the held-out splits and the tokenizer's corpus are the same."""
    hard = syn.build_task(PARAMS.model_copy(update={"pool_min_steps": 5, "pool_max_steps": 5}), 0)
    ops = lambda q: len(syn.parse_question(q).ops)  # noqa: E731
    assert {ops(q.question) for pool in hard.pools for q in pool} == {5}
    assert [len(p) for p in hard.pools] == [len(p) for p in task.pools]
    for split in ("ift", "eft", "eft_test", "test", "srlm_eft"):
        assert getattr(hard, split) == getattr(task, split), split
    templates = Templates.from_params(PromptParams(style="compact"))
    assert list(corpus(hard, templates)) == list(corpus(task, templates))
    seen = {r.question for r in hard.ift} | {p.question for p in hard.test} | {r.question for r in hard.eft}
    assert not seen & {q.question for pool in hard.pools for q in pool}  # still distinct from every split
