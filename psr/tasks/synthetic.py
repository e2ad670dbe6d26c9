"""The embedded synthetic task: multi-step arithmetic word problems with exact step solutions.

Why a synthetic task: the tiny preset trains a ~0.7M-parameter model from scratch on a CPU, so it
needs a task whose every step is checkable exactly (the paper's NuminaMath + o1 + PRM pipeline is
out of reach) and whose difficulty has knobs. A problem is a chain of `+ - *` operations on a
count ("Mia has 23 apples. She buys 45 more. ... How many apples does Mia have now?"); its
solution is one operation per step, `23 + 45 = 68`, then `The answer is \\boxed{68}.` Values stay
in [1, max_value] and multiplication is by a small factor (2..max_factor).

Everything is generated offline from one seed with `random.Random` instances (never the global
RNG; `random.Random` streams are stable across Python versions, numpy's `Generator` streams are
not promised to be), so the same seed writes byte-identical files.

**The step judge's explanation (EFT `judgment`).** It is generated greedily by a tiny model with a
~400-token context and ~48 new tokens, so it must be short. A judge that only restates the
candidates copies them (and ignores which is right), and one that re-computes *after* reading
both candidates copies one of them (README, "What the embedded study shows"). So the explanation
first states what the next step must be, derived from the context alone, then compares each
candidate's claim with it:

    Next: 45 + 23 = 68. A: 68 ok. B: 67 no. [[A]]
    Next: answer 168. A: answer 186 no. B: answer 168 ok. [[B]]

The `Next:` part is exactly the work a policy does for one step (read the previous result and
the k-th sentence of the question; one operation), so judging costs one generation plus two
string comparisons of a few digits, which is the cheapest check that still catches every error
kind below (each changes the step's claimed value). A candidate's *claim* is its result (the
number after `=`) or `answer N` for a `\\boxed{N}` step; comparison is exact string equality, so
the verdict follows from the text mechanically (`eft_judgment` builds it for any pair, e.g. for
on-policy negatives taken from the model's own samples).

**Bad steps** (`EFTRecord.error`): `arithmetic` (right operands and operation, result off by one
digit, by ±1 or by ±10 — the same-operation pairs that are a small model's own common errors,
about 40% of non-final pairs), `operand` (a number from the question or an earlier value used in
place of the right one, computed correctly), `operation` (another of + - *), `premature`
(`\\boxed{}` of the current value before all operations are done) and, for the final step,
`final` (a boxed wrong number). Verdict slots are balanced exactly (alternate, then shuffle).

**SRLM judgments** check the steps in order and stop at the first wrong one:
`Check: ok ok ok ok. Score: 5` or `Check: ok no, expected 68. Score: 2` (2 when the first error
is in the first half of the steps, 3 later); the wrong responses carry the error forward to a
wrong boxed answer.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from psr.config import TaskParams
from psr.records import EFTRecord, IFTRecord, Problem, Question, SRLMEFTRecord
from psr.steps import join_steps
from psr.tasks.data import TaskData

ERROR_KINDS: tuple[str, ...] = ("arithmetic", "operand", "operation", "premature", "final")
# Weights for a non-final judged step; a final step always gets `final`.
ERROR_WEIGHTS: dict[str, float] = {"arithmetic": 0.4, "operand": 0.2, "operation": 0.2, "premature": 0.2}
ALL_OPS = ("+", "-", "*")
BAD_VALUE_LIMIT = 9999  # wrong steps may leave [1, max_value] (a wrong operand times 5), not 4 digits

# --------------------------------------------------------------------------------------------
# Question text. Each template is (op, text, fixed factor or None); `{x}` is the operand.

NAMES = {
    "Mia": "she", "Leo": "he", "Ava": "she", "Sam": "he", "Zoe": "she", "Max": "he",
    "Lily": "she", "Ben": "he", "Emma": "she", "Noah": "he", "Ella": "she", "Jack": "he",
    "Ruby": "she", "Owen": "he", "Nora": "she", "Finn": "he",
}
OBJECTS = ("apples", "marbles", "stickers", "coins", "cards", "pens", "books", "shells",
           "stamps", "cookies", "beads", "toys")
START_TEMPLATES = ("{name} has {n} {obj}.", "{name} starts with {n} {obj}.")
# `{P}`/`{p}`: the pronoun capitalised or not; each pronoun sentence also comes as "Then {p} ...".
_OP_BASE: tuple[tuple[str, str, int | None], ...] = (
    ("+", "buys {x} more.", None),
    ("+", "finds {x} more.", None),
    ("+", "gets {x} more from a friend.", None),
    ("-", "gives away {x}.", None),
    ("-", "loses {x}.", None),
    ("-", "sells {x}.", None),
    ("*", "multiplies them by {x}.", None),
)
OP_TEMPLATES: tuple[tuple[str, str, int | None], ...] = tuple(
    t for op, verb, k in _OP_BASE for t in ((op, "{P} " + verb, k), (op, "Then {p} " + verb, k))
) + (("*", "The number of {obj} doubles.", 2), ("*", "The number of {obj} triples.", 3))
END_TEMPLATE = "How many {obj} does {name} have now?"

# `wording: plain`: a subset of the templates above (so `parse_question` reads both wordings),
# one sentence per operation, each with exactly one number, and few names and objects. A tiny
# model trained from scratch for minutes then spends its steps on arithmetic rather than on
# learning to find the operand among paraphrases (results/tiny/calibration.md).
PLAIN_NAMES = ("Mia", "Leo", "Ava", "Sam")
PLAIN_OBJECTS = ("apples", "coins", "cards", "pens")
PLAIN_START = START_TEMPLATES[0]
PLAIN_OP_TEMPLATES: dict[str, str] = {"+": "{P} buys {x} more.", "-": "{P} sells {x}.", "*": "{P} multiplies them by {x}."}


def _regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name, group in (("x", r"(?P<x>\d+)"), ("n", r"(?P<n>\d+)"), ("name", r"(?P<name>[A-Z][a-z]+)"),
                        ("obj", r"[a-z]+"), ("p", r"(?:she|he)"), ("P", r"(?:She|He)")):
        pattern = pattern.replace(re.escape("{" + name + "}"), group)
    return re.compile("^" + pattern + "$")


_START_RE = [_regex(t) for t in START_TEMPLATES]
_OP_RE = [(op, _regex(t), k) for op, t, k in OP_TEMPLATES]
_END_RE = _regex(END_TEMPLATE)
_SENTENCE = re.compile(r"(?<=[.?])\s+")


@dataclass(frozen=True)
class Chain:
    """The arithmetic behind a question: a start value and the operations in order."""

    start: int
    ops: tuple[tuple[str, int], ...]

    @property
    def n_ops(self) -> int:
        return len(self.ops)

    def values(self) -> list[int]:
        """The value before each operation, then the answer (n_ops + 1 numbers)."""
        out = [self.start]
        for op, x in self.ops:
            out.append(apply_op(out[-1], op, x))
        return out

    def steps(self) -> list[str]:
        values = self.values()
        return [equation(values[i], op, x) for i, (op, x) in enumerate(self.ops)] + [final_step(values[-1])]


def apply_op(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operation {op!r}")


def equation(a: int, op: str, b: int) -> str:
    return f"{a} {op} {b} = {apply_op(a, op, b)}"


def final_step(value: int) -> str:
    return f"The answer is \\boxed{{{value}}}."


def parse_question(question: str) -> Chain:
    """Recover the operations from a question this module wrote (an oracle for analysis: the
    search never calls it). Raises ValueError on text that is not one of our templates."""
    sentences = _SENTENCE.split(question.strip())
    if len(sentences) < 2:
        raise ValueError(f"not a synthetic question: {question[:80]!r}")
    m = next((r.match(sentences[0]) for r in _START_RE if r.match(sentences[0])), None)
    if not m or not _END_RE.match(sentences[-1]):
        raise ValueError(f"not a synthetic question: {question[:80]!r}")
    ops = []
    for sentence in sentences[1:-1]:
        for op, regex, fixed in _OP_RE:
            hit = regex.match(sentence)
            if hit:
                ops.append((op, fixed if fixed is not None else int(hit.group("x"))))
                break
        else:
            raise ValueError(f"unknown operation sentence {sentence!r} in {question[:80]!r}")
    return Chain(int(m.group("n")), tuple(ops))


# --------------------------------------------------------------------------------------------
# Problem generation.

def check_params(params: TaskParams) -> None:
    """Reject knobs the generator cannot honour, with the reason (TaskParams.check plus ours)."""
    errors = params.check()
    if errors:
        raise ValueError("bad task params: " + "; ".join(f"{k} {v}" for k, v in sorted(errors.items())))


def _make_chain(rng: random.Random, n_ops: int, params: TaskParams) -> tuple[Chain, list[str]]:
    """A chain of `n_ops` valid operations (values in [1, max_value]) and its question sentences."""
    max_value, max_factor = params.max_value, params.max_factor
    for _ in range(1000):
        cur = start = rng.randint(1, params.max_operand)
        ops: list[tuple[str, int]] = []
        for _ in range(n_ops):
            valid = []
            if "+" in params.operations and cur + 1 <= max_value:
                valid.append("+")
            if "-" in params.operations and cur >= 2:
                valid.append("-")
            if "*" in params.operations and cur * 2 <= max_value:
                valid.append("*")
            if not valid:
                break
            op = rng.choice(valid)
            if op == "+":
                x = rng.randint(1, min(params.max_operand, max_value - cur))
            elif op == "-":
                x = rng.randint(1, min(params.max_operand, cur - 1))
            else:
                x = rng.randint(2, max(2, min(max_factor, max_value // cur)))
            ops.append((op, x))
            cur = apply_op(cur, op, x)
        if len(ops) == n_ops:
            break
    else:
        raise ValueError(
            f"cannot make a {n_ops}-operation chain with operations {params.operations}, "
            f"max_operand {params.max_operand}, max_value {max_value}"
        )
    if params.wording == "plain":
        return Chain(start, tuple(ops)), _plain_sentences(rng, start, ops)
    name = rng.choice(sorted(NAMES))
    pronoun = NAMES[name]
    obj = rng.choice(OBJECTS)
    sentences = [rng.choice(START_TEMPLATES).format(name=name, n=start, obj=obj)]
    for op, x in ops:
        choices = [t for o, t, k in OP_TEMPLATES if o == op and (k is None or k == x)]
        sentences.append(rng.choice(choices).format(P=pronoun.capitalize(), p=pronoun, x=x, obj=obj))
    sentences.append(END_TEMPLATE.format(obj=obj, name=name))
    return Chain(start, tuple(ops)), sentences


def _plain_sentences(rng: random.Random, start: int, ops: list[tuple[str, int]]) -> list[str]:
    name, obj = rng.choice(PLAIN_NAMES), rng.choice(PLAIN_OBJECTS)
    pronoun = NAMES[name].capitalize()
    return ([PLAIN_START.format(name=name, n=start, obj=obj)]
            + [PLAIN_OP_TEMPLATES[op].format(P=pronoun, x=x) for op, x in ops]
            + [END_TEMPLATE.format(obj=obj, name=name)])


def make_problem(rng: random.Random, n_ops: int, params: TaskParams, id: str = "") -> Problem:
    """One problem with `n_ops` operations, its exact step solution and gold answer."""
    if not isinstance(rng, random.Random):
        raise TypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if n_ops < 1:
        raise ValueError(f"n_ops must be >= 1, got {n_ops}")
    chain, sentences = _make_chain(rng, n_ops, params)
    return _problem(chain, sentences, id)


def _problem(chain: Chain, sentences: list[str], id: str) -> Problem:
    return Problem(id=id, question=" ".join(sentences), gold=str(chain.values()[-1]),
                   steps=chain.steps(), n_ops=chain.n_ops)


def _unique_problems(rng: random.Random, n: int, params: TaskParams, min_ops: int, max_ops: int,
                     id_prefix: str, seen: set[str]) -> list[tuple[Problem, Chain]]:
    """`n` problems whose questions are not in `seen` (which is updated). Operation counts cycle
    through min_ops..max_ops and are shuffled, so every length is present even for small n."""
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"need 1 <= min_ops <= max_ops, got {min_ops}, {max_ops}")
    counts = [min_ops + i % (max_ops - min_ops + 1) for i in range(n)]
    rng.shuffle(counts)
    width = max(5, len(str(n)))
    out = []
    for i, n_ops in enumerate(counts):
        for _ in range(200):
            chain, sentences = _make_chain(rng, n_ops, params)
            question = " ".join(sentences)
            if question not in seen:
                break
        else:
            raise ValueError(
                f"cannot find {n} distinct {id_prefix} questions (with {len(seen)} already used); "
                "raise max_operand or the step range, or ask for fewer"
            )
        seen.add(question)
        out.append((_problem(chain, sentences, f"{id_prefix}-{i:0{width}d}"), chain))
    return out


def make_problems(seed: int, n: int, params: TaskParams, min_ops: int, max_ops: int,
                  id_prefix: str = "p") -> list[Problem]:
    """`n` problems with distinct questions, reproducible from `seed`."""
    check_params(params)
    rng = random.Random(f"psr-synthetic:{seed}:{id_prefix}")
    return [p for p, _ in _unique_problems(rng, n, params, min_ops, max_ops, id_prefix, set())]


def answer_of(problem: Problem) -> int:
    try:
        return int(problem.gold)
    except ValueError:
        raise ValueError(f"problem {problem.id}: gold {problem.gold!r} is not an integer") from None


_BOXED = re.compile(r"\\boxed\{\s*(-?\d+)\s*\}")
_EQUATION = re.compile(r"(-?\d+)\s*([+\-*])\s*(-?\d+)\s*=\s*(-?\d+)")
_INT = re.compile(r"-?\d+")


def boxed_value(text: str) -> int | None:
    """The integer in the last `\\boxed{N}`, or None (regex only; model text is never evaluated)."""
    found = _BOXED.findall(text or "")
    return int(found[-1]) if found else None


def check_solution(problem: Problem, steps: list[str] | str) -> bool:
    """True when the last `\\boxed{}` holds exactly the gold integer."""
    text = steps if isinstance(steps, str) else "\n".join(steps)
    value = boxed_value(text)
    return value is not None and value == answer_of(problem)


def claim(step: str) -> str:
    """What a step asserts, for comparison: `answer N` for a boxed step, else the result of its
    last equation, else its last integer, else `?`."""
    value = boxed_value(step)
    if value is not None:
        return f"answer {value}"
    eqs = _EQUATION.findall(step)
    if eqs:
        return str(int(eqs[-1][3]))
    ints = _INT.findall(step)
    return str(int(ints[-1])) if ints else "?"


# --------------------------------------------------------------------------------------------
# Judgments.

def reference_next(question: str, previous_steps: list[str]) -> str:
    """The correct next step given the earlier steps *as written* (local correctness: the first
    operand is the previous step's claimed result), or the final boxed step after the last op."""
    chain = parse_question(question)
    d = len(previous_steps)
    if d > chain.n_ops:
        raise ValueError(f"{d} previous steps, but the question has only {chain.n_ops} operations")
    if any(boxed_value(s) is not None for s in previous_steps):
        raise ValueError("the previous steps already hold a boxed answer")
    if d == 0:
        cur = chain.start
    else:
        last = claim(previous_steps[-1])
        if not _INT.fullmatch(last):
            raise ValueError(f"previous step has no result: {previous_steps[-1]!r}")
        cur = int(last)
    if d == chain.n_ops:
        return final_step(cur)
    op, x = chain.ops[d]
    return equation(cur, op, x)


def _expected_line(expected: str) -> str:
    value = boxed_value(expected)
    return f"Next: answer {value}." if value is not None else f"Next: {expected}."


def judgment_text(expected: str, step_a: str, step_b: str) -> tuple[str, str]:
    """The judge's explanation and verdict for a pair where exactly one step matches `expected`."""
    want = claim(expected)
    ok_a, ok_b = claim(step_a) == want, claim(step_b) == want
    if ok_a == ok_b:
        raise ValueError(f"need exactly one correct step, got A ok={ok_a}, B ok={ok_b}")
    verdict = "A" if ok_a else "B"
    text = (f"{_expected_line(expected)} A: {claim(step_a)} {'ok' if ok_a else 'no'}. "
            f"B: {claim(step_b)} {'ok' if ok_b else 'no'}. [[{verdict}]]")
    return text, verdict


def eft_judgment(question: str, previous_steps: list[str], step_a: str, step_b: str) -> tuple[str, str]:
    """Oracle judgment for any step pair on a synthetic question (e.g. on-policy negatives)."""
    return judgment_text(reference_next(question, previous_steps), step_a, step_b)


def srlm_judgment(question: str, steps: list[str]) -> tuple[str, int]:
    """Check a whole response step by step against the reference; stop at the first wrong step.
    Score 5 if all are right, else 2 when the first error is in the first half, 3 later."""
    ref = parse_question(question).steps()
    checks = []
    for j, ref_step in enumerate(ref):
        if j >= len(steps) or claim(steps[j]) != claim(ref_step):
            score = 2 if j < len(ref) / 2 else 3
            checks.append(f"no, expected {claim(ref_step).removeprefix('answer ')}")
            return f"Check: {' '.join(checks)}. Score: {score}", score
        checks.append("ok")
    return f"Check: {' '.join(checks)}. Score: 5", 5


# --------------------------------------------------------------------------------------------
# Bad steps.

def _slip(rng: random.Random, value: int) -> int:
    """A near miss: ±1, ±10, or one digit changed (no new leading zero)."""
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            wrong = value + rng.choice((-1, 1))
        elif kind == 1:
            wrong = value + rng.choice((-10, 10))
        else:
            digits = str(value)
            pos = rng.randrange(len(digits))
            choices = [d for d in "0123456789" if d != digits[pos] and not (pos == 0 and d == "0" and len(digits) > 1)]
            wrong = int(digits[:pos] + rng.choice(choices) + digits[pos + 1:])
        if wrong >= 0 and wrong != value:
            return wrong


def bad_step(rng: random.Random, chain: Chain, depth: int, kind: str | None = None,
             weights: dict[str, float] | None = None) -> tuple[str, str]:
    """A realistic wrong step at position `depth` (0-based; `chain.n_ops` is the final step), and
    its error kind. Its claim always differs from the correct step's claim."""
    values = chain.values()
    gold = values[-1]
    if depth == chain.n_ops:
        earlier = sorted({v for v in values[:-1] if v != gold})
        wrong = rng.choice(earlier) if earlier and rng.random() < 0.3 else _slip(rng, gold)
        return final_step(wrong), "final"
    cur, (op, x) = values[depth], chain.ops[depth]
    correct = values[depth + 1]
    weights = weights or ERROR_WEIGHTS
    kinds = [kind] if kind else rng.choices(list(weights), weights=list(weights.values()), k=1)
    for k in kinds + ["arithmetic"]:  # fall back to a slip, which always exists
        step = None
        if k == "arithmetic":
            step = f"{cur} {op} {x} = {_slip(rng, correct)}"
        elif k == "operand":
            numbers = {chain.start, *(v for _, v in chain.ops), *values[:depth]}
            options = [(cur, y) for y in sorted(numbers - {x})] + [(y, x) for y in sorted(numbers - {cur})]
            options = [(a, b) for a, b in options if 0 <= apply_op(a, op, b) <= BAD_VALUE_LIMIT
                       and apply_op(a, op, b) != correct]
            if options:
                a, b = rng.choice(options)
                step = equation(a, op, b)
        elif k == "operation":
            options = [o for o in ALL_OPS if o != op and 0 <= apply_op(cur, o, x) <= BAD_VALUE_LIMIT
                       and apply_op(cur, o, x) != correct]
            if options:
                step = equation(cur, rng.choice(options), x)
        elif k == "premature":
            if cur != gold:
                step = final_step(cur)
        else:
            raise ValueError(f"unknown error kind {k!r} for a non-final step")
        if step is not None:
            return step, k
    raise AssertionError("unreachable: a slip always exists")


def _corrupt(rng: random.Random, chain: Chain) -> list[str]:
    """A whole response with one error at a random step, carried forward to a wrong answer."""
    ref = chain.steps()
    for _ in range(100):
        e = rng.randint(0, chain.n_ops)
        step, _kind = bad_step(rng, chain, e)
        if boxed_value(step) is not None:
            return ref[:e] + [step]
        cur = int(claim(step))
        steps = ref[:e] + [step]
        for op, x in chain.ops[e + 1:]:
            nxt = apply_op(cur, op, x)
            if not 0 <= nxt <= BAD_VALUE_LIMIT:
                break
            steps.append(equation(cur, op, x))
            cur = nxt
        else:
            if cur != chain.values()[-1]:
                return steps + [final_step(cur)]
    step, _ = bad_step(rng, chain, chain.n_ops)
    return ref[:-1] + [step]


# --------------------------------------------------------------------------------------------
# The task.

def _balanced(rng: random.Random, n: int, a, b) -> list:
    out = [a if i % 2 == 0 else b for i in range(n)]
    rng.shuffle(out)
    return out


def _eft_records(rng: random.Random, items: list[tuple[Problem, Chain]]) -> list[EFTRecord]:
    records = []
    for (problem, chain), verdict in zip(items, _balanced(rng, len(items), "A", "B")):
        depth = rng.randint(0, chain.n_ops)
        good = problem.steps[depth]
        bad, kind = bad_step(rng, chain, depth)
        a, b = (good, bad) if verdict == "A" else (bad, good)
        judgment, got = judgment_text(good, a, b)
        assert got == verdict
        records.append(EFTRecord(id=problem.id, question=problem.question, previous_steps=problem.steps[:depth],
                                 step_a=a, step_b=b, verdict=verdict, judgment=judgment, error=kind))
    return records


def _srlm_records(rng: random.Random, items: list[tuple[Problem, Chain]]) -> list[SRLMEFTRecord]:
    records = []
    for (problem, chain), correct in zip(items, _balanced(rng, len(items), True, False)):
        steps = problem.steps if correct else _corrupt(rng, chain)
        judgment, score = srlm_judgment(problem.question, steps)
        records.append(SRLMEFTRecord(id=problem.id, question=problem.question, response=join_steps(steps),
                                     score=score, judgment=judgment))
    return records


def build_task(params: TaskParams, seed: int) -> TaskData:
    """All splits from one seed. Questions are distinct across every split. Each split has its own
    RNG stream and the test set is drawn first, so it depends only on the seed and the problem
    knobs, not on the sizes of the training splits."""
    check_params(params)
    seen: set[str] = set()

    def split(name: str, n: int, lo: int, hi: int) -> tuple[random.Random, list[tuple[Problem, Chain]]]:
        rng = random.Random(f"psr-synthetic:{seed}:{name}")
        return rng, _unique_problems(rng, n, params, lo, hi, name, seen)

    lo, hi = params.min_steps, params.max_steps
    judge_hi = params.eft_max_steps or hi
    pool_lo, pool_hi = params.pool_min_steps or lo, params.pool_max_steps or hi
    _, test = split("test", params.n_test, lo, params.test_max_steps)
    eft_test_rng, eft_test = split("eft_test", params.n_eft_test, lo, judge_hi)
    # pools in the IFT range are drawn here, before the training splits, whatever the pool range:
    # the warm-up data and the tokenizer (`tokenizer_questions`) then do not depend on where the
    # search pools come from (a warmed-up M1 stays valid when only the pools change); pools of
    # another range are drawn last
    in_range = [split(f"pool{i}", n, lo, hi)[1] for i, n in enumerate(params.questions_per_iteration, start=1)]
    eft_rng, eft = split("eft", params.n_eft, lo, judge_hi)
    _, ift = split("ift", params.n_ift, lo, hi)
    srlm_rng, srlm = split("srlm", params.n_srlm_eft, lo, judge_hi)
    pools = in_range if (pool_lo, pool_hi) == (lo, hi) else [
        split(f"pool{i}:{pool_lo}-{pool_hi}", n, pool_lo, pool_hi)[1]
        for i, n in enumerate(params.questions_per_iteration, start=1)]
    return TaskData(
        ift=[IFTRecord(id=p.id, question=p.question, steps=p.steps) for p, _ in ift],
        eft=_eft_records(eft_rng, eft),
        eft_test=_eft_records(eft_test_rng, eft_test),
        pools=[[Question(id=p.id, question=p.question) for p, _ in pool] for pool in pools],
        test=[p for p, _ in test],
        srlm_eft=_srlm_records(srlm_rng, srlm),
        tokenizer_questions=[] if pools is in_range else
        [Question(id=p.id, question=p.question) for pool in in_range for p, _ in pool],
    )
