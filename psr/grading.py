"""Answer extraction and answer equivalence for math benchmarks.

The paper scores accuracy "following Yang et al. (2024b)", i.e. the Qwen2.5-Math evaluation
harness: the answer is the last ``\\boxed{...}`` (``parser.py::extract_answer``), both answers
are cleaned by ``parser.py::strip_string``, and ``grader.py::math_equal`` accepts them when they
match as strings, as numbers (``isclose(rel_tol=1e-4)``, also up to a factor 100 for
percentages), element by element (tuples, intervals, matrices), or symbolically.

Why this is hand-written: the harness is a folder of scripts, not a pip package, and it pins the
unmaintained ``latex2sympy2``. Its string rules are re-implemented here (fast, in-process); the
symbolic part is delegated to math-verify, the maintained library for symbolic answer equality.

Why a separate process: sympy can run for minutes or exhaust memory on hostile input
(``10^{10^{10}}``), and math-verify's own timeout uses ``SIGALRM``, which only works in the main
thread of the main interpreter. So its timeout is disabled and every symbolic check runs in a
worker process that is killed when the caller's deadline passes. The worker is forked from a
small "zygote" process that has already imported math-verify, so a kill costs a fork (ms), not a
fresh interpreter start, and the caller never waits much past its timeout. The zygote is a plain
``subprocess`` (not ``multiprocessing``), so grading also works inside daemonic pool workers and
in any thread. POSIX only (``os.fork``, ``select`` on pipes).

Deliberate deviations from the harness, each of which made it accept wrong answers:
``(1,3]`` is not equal to ``[1,3)`` (the harness ignores bracket types), ``(a+b)c`` is not equal
to ``a+bc`` (the harness compares with all brackets deleted), ``3,4`` is a list and not the
number 34, ``1 and 2`` is a list and not ``12``, and unit words are only stripped after a number.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn

DEFAULT_TIMEOUT_S = 3.0
"""Hard limit for one ``is_equiv`` call's symbolic work, in seconds."""

MAX_ANSWER_CHARS = 2000
"""Longer answers are only compared as exact strings: real answers are short, and regexes and
sympy on megabyte inputs are where the time goes."""

NUMERIC_REL_TOL = 1e-4
"""``grader.py::numeric_equal`` uses ``math.isclose(reference, prediction, rel_tol=1e-4)``."""

_WORKER_MEMORY_BYTES = 2 * 1024**3
_STARTUP_TIMEOUT_S = 120.0
_CHOICES = frozenset("ABCDE")

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)")
_ANSWER_IS_RE = re.compile(r"(?:he|final) answer is")
_LAST_NUMBER_RE = re.compile(r"-?\d*\.?\d+")


def extract_answer(text: str, fallback: bool = False) -> str | None:
    """Return the content of the last ``\\boxed{}`` / ``\\fbox{}`` in ``text``, or None.

    Braces are matched, so ``\\boxed{\\frac{1}{2}}`` gives ``\\frac{1}{2}``. An unclosed box (a
    truncated generation) gives the rest of the text, and ``\\boxed 5`` gives the text up to the
    next ``$`` or line break, as the harness does. With ``fallback=True`` the harness's fallbacks
    apply when there is no box: "the answer is X", then the last number in the text. Linear
    time; never raises on a ``str``.
    """
    boxed = _last_box(text)
    if boxed is not None or not fallback:
        return boxed
    return _answer_is(text) or _last_number(text)


def _last_box(text: str) -> str | None:
    """Content of the last box command, brace-matched."""
    matches = list(_BOX_RE.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    stripped = rest.lstrip()
    if not stripped.startswith("{"):
        return re.split(r"[$\n]", stripped, maxsplit=1)[0].strip()
    return _brace_content(stripped).strip()


def _brace_content(text: str) -> str:
    """Text inside the ``{`` that opens ``text``, up to its matching ``}`` (or the end)."""
    depth = 0
    for index, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return text[1:index]
    return text[1:]


def _answer_is(text: str) -> str | None:
    """The harness's "the answer is X" fallback, cut to one line or one ``$...$`` span."""
    parts = _ANSWER_IS_RE.split(text)
    if len(parts) < 2:
        return None
    tail = parts[-1].strip().lstrip(":").strip().split("\n", 1)[0]
    math_span = re.match(r"\$+([^$]+)\$", tail)
    answer = math_span.group(1) if math_span else tail.split(". ", 1)[0]
    return answer.strip().rstrip(".").strip() or None


def _last_number(text: str) -> str | None:
    """The harness's last resort: the last number, thousands separators removed."""
    numbers = _LAST_NUMBER_RE.findall(text.replace(",", ""))
    return numbers[-1] if numbers else None


# ---------------------------------------------------------------------------------------------
# Normalisation (parser.py::strip_string, adapted)
# ---------------------------------------------------------------------------------------------

# Multi-letter unit words, stripped only after a number or a closing brace ("22.1cm^{2}",
# "5 feet"). The harness's list also has single letters ("m", "s", "a"), which eat variables.
_UNIT_WORDS = (
    "cm|mm|km|meters?|metres?|inch|inches|feet|foot|ft|yards?|miles?|mph|kmph|kmh|"
    "hours?|hrs?|minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|"
    "dollars?|cents?|degrees?|units?|square|sq|cubic|kg|grams?|pounds?|lbs?|"
    "liters?|litres?|ml|gallons?|students?|people|points?|meals?|ways?|percent"
)
_TRAILING_UNITS_RE = re.compile(
    r"(?P<value>.+?)(?:(?<=[\d}])|\s+)(?:(?:" + _UNIT_WORDS + r")\b\s*)+(?:\^\s*\{?[23]\}?)?"
)
_TRAILING_TEXT_RE = re.compile(
    r"(?P<value>.*?)\s*\\(?:text|mbox)\s*\{[^{}]*\}(?:\s*\^\s*\{?[23]\}?)?"
)
# Roman letters after a value are a unit ("12 \mathrm{~m}"), except the constants i, e and d.
_TRAILING_MATHRM_RE = re.compile(
    r"(?P<value>.*?)\s*\\mathrm\s*\{\s*(?![ied]\s*\})[a-zA-Z][a-zA-Z ]*\}(?:\s*\^\s*\{?[23]\}?)?"
)
_TEXT_WRAPPER_RE = re.compile(r"\\(?:text|textbf|textrm|mbox)\s*\{([^{}]*)\}")
# A row break ``\\`` is matched first so that its second backslash is not read as ``\ ``.
_SPACING_RE = re.compile(r"\\\\|\\(?:[,;: ]|quad|qquad)|~")
_THOUSANDS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SHORT_LHS_RE = re.compile(r"^\s*[^=<>]{1,2}?\s*=(?!=)")
_MEMBERSHIP_PREFIX_RE = re.compile(r"^\s*[xyz]\s*(?:\\in|\\to)\s*")


def _normalise(answer: str) -> str:
    """Harness-style clean-up of one answer; keeps spaces (see ``_canonical``)."""
    text = answer.strip().replace("\n", " ").rstrip(".").replace("\\!", "")
    text = text.replace("{,}", ",")
    text = _SPACING_RE.sub(lambda m: m.group() if m.group() == "\\\\" else " ", text)
    text = re.sub(r"\\begin\{array\}\{[^}]*\}", r"\\begin{pmatrix}", text)
    text = text.replace("\\end{array}", "\\end{pmatrix}").replace("bmatrix", "pmatrix")
    text = re.sub(r"\\[dtc]frac", r"\\frac", text)
    text = text.replace("\\neq", "\\ne").replace("\\leq", "\\le").replace("\\geq", "\\ge")
    text = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", text)
    text = text.replace("\\{", "{").replace("\\}", "}")
    text = _strip_units(text)
    text = text.replace("^{\\circ}", "").replace("^\\circ", "").replace("°", "")
    text = text.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    text = _TEXT_WRAPPER_RE.sub(r"\1", text)
    text = _MEMBERSHIP_PREFIX_RE.sub("", text)
    text = text.replace("\\emptyset", "{}").replace("\\varnothing", "{}")
    text = re.sub(r"\(\s*-\s*\\infty\s*,\s*\+?\s*\\infty\s*\)", r"\\mathbb{R}", text)
    text = text.replace("\\%", "").replace("%", "")
    text = re.sub(r"\binfinity\b", r"\\infty", text)
    text = re.sub(r"(?<!\\)\binf\b", r"\\infty", text)
    text = re.sub(r"\band\b", ",", text)
    text = text.replace("\\mathbf", "")
    return _normalise_numbers(text).strip()


def _strip_units(text: str) -> str:
    """Drop a trailing unit (``\\text{ cm}``, ``\\mathrm{~m}``, ``5 feet``) if a value remains."""
    for pattern in (_TRAILING_TEXT_RE, _TRAILING_MATHRM_RE, _TRAILING_UNITS_RE):
        match = pattern.fullmatch(text)
        if match and match.group("value").strip():
            text = match.group("value").strip()
    return text


def _normalise_numbers(text: str) -> str:
    """Thousands separators, ``27.0`` -> ``27``, ``.5`` -> ``0.5``, ``\\sqrt2``, ``\\frac12``."""
    stripped = text.strip()
    if _THOUSANDS_RE.fullmatch(stripped):
        text = stripped.replace(",", "")
    text = re.sub(r"(\d+)\.0*(?![\d.])", r"\1", text)
    text = re.sub(r"(^|[\s{(\[,=+\-])\.(\d)", r"\g<1>0.\2", text)
    text = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", text)
    text = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", text)
    text = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*\{", r"\\frac{\1}{", text)
    return re.sub(r"\\frac\s*\{([^{}]*)\}\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", text)


def _drop_short_lhs(text: str) -> str:
    """``x = 3`` -> ``3``, ``k=2n-1`` -> ``2n-1``: the harness drops a left side of <= 2 chars."""
    if text.count("=") == 1 and _SHORT_LHS_RE.match(text):
        return text.split("=", 1)[1].strip()
    return text


def _unwrap(text: str) -> str:
    """Remove ``()`` or ``{}`` around the whole answer when it holds a single item."""
    while len(text) > 2 and text[0] + text[-1] in ("()", "{}") and _encloses(text):
        inner = text[1:-1].strip()
        if not inner or len(_split_top_level(inner)) != 1:
            break
        text = inner
    return text


def _canonical(text: str) -> str:
    """Form used for string equality: normalised, without spaces, lower case."""
    return re.sub(r"\s+", "", text).lower()


# ---------------------------------------------------------------------------------------------
# Numbers and structures
# ---------------------------------------------------------------------------------------------

_NUMBER = r"[+-]?(?:\d+\.?\d*|\.\d+)"
_DECIMAL_RE = re.compile(_NUMBER + r"(?:e[+-]?\d+)?", re.IGNORECASE)
_FRAC_RE = re.compile(r"([+-]?)\\frac\{(" + _NUMBER + r")\}\{(" + _NUMBER + r")\}")
_SLASH_RE = re.compile(r"(" + _NUMBER + r")/(" + _NUMBER + r")")


def _as_number(text: str) -> float | None:
    """Value of a plain number or numeric fraction (``-\\frac{3}{4}``, ``3/4``), else None."""
    value: float | None = None
    if _DECIMAL_RE.fullmatch(text):
        value = float(text)
    elif match := _FRAC_RE.fullmatch(text):
        value = _ratio(match.group(2), match.group(3), negate=match.group(1) == "-")
    elif match := _SLASH_RE.fullmatch(text):
        value = _ratio(match.group(1), match.group(2), negate=False)
    return value if value is not None and math.isfinite(value) else None


def _ratio(numerator: str, denominator: str, negate: bool) -> float | None:
    """``numerator / denominator`` as a float, None for a zero denominator."""
    bottom = float(denominator)
    if bottom == 0:
        return None
    value = float(numerator) / bottom
    return -value if negate else value


def _numbers_match(pred: float, gold: float, include_percentage: bool) -> bool:
    """``grader.py::is_numerical_equal``: with percentages, gold/100, gold and gold*100 count."""
    targets = (gold / 100, gold, gold * 100) if include_percentage else (gold,)
    return any(math.isclose(pred, target, rel_tol=NUMERIC_REL_TOL) for target in targets)


def _choice_matches(pred: str, gold: str) -> bool:
    """``grader.py::choice_answer_clean``: the last standalone A-E letter in the prediction."""
    letters = re.findall(r"\b([A-E])\b", pred.upper())
    return bool(letters) and letters[-1] == gold.upper()


def _split_top_level(text: str, separator: str = ",") -> list[str]:
    """Split on ``separator`` outside all brackets; one part if brackets don't balance."""
    parts: list[str] = []
    depth = 0
    start = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth < 0:
                return [text]
        elif char == separator and depth == 0:
            parts.append(text[start:index].strip())
            start = index + 1
    if depth != 0:
        return [text]
    parts.append(text[start:].strip())
    return parts


def _encloses(text: str) -> bool:
    """True when the bracket opening ``text`` closes at its last character."""
    depth = 0
    for index, char in enumerate(text):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
            if depth == 0:
                return index == len(text) - 1
    return False


_PMATRIX_OPEN = "\\begin{pmatrix}"
_PMATRIX_CLOSE = "\\end{pmatrix}"
_ORDERED_KINDS = frozenset({"()", "[]", "(]", "[)"})  # tuples, vectors and intervals
_SET_KIND = "{}"


def _structure(text: str) -> tuple[str, list[str]] | None:
    """Split a matrix, tuple, interval, set or bare comma list into (kind, elements)."""
    if text.startswith(_PMATRIX_OPEN) and text.endswith(_PMATRIX_CLOSE):
        body = text[len(_PMATRIX_OPEN) : -len(_PMATRIX_CLOSE)]
        rows = [row.split("&") for row in body.split("\\\\") if row.strip()]
        widths = {len(row) for row in rows}
        shape = f"{len(rows)}x{widths.pop()}" if len(widths) == 1 else "ragged"
        return f"matrix{shape}", [cell.strip() for row in rows for cell in row]
    kind = text[:1] + text[-1:]
    if (kind in _ORDERED_KINDS or kind == _SET_KIND) and len(text) > 2 and _encloses(text):
        parts = _split_top_level(text[1:-1])
        if len(parts) >= 2:
            return kind, parts
    parts = _split_top_level(text)
    return (",", parts) if len(parts) >= 2 else None


# ---------------------------------------------------------------------------------------------
# Equivalence
# ---------------------------------------------------------------------------------------------


def is_equiv(
    pred: str | None,
    gold: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    include_percentage: bool = True,
) -> bool:
    """True when ``pred`` is an acceptable answer for ``gold`` (Qwen2.5-Math ``math_equal``).

    Fast in-process checks come first (string equality after harness-style normalisation,
    multiple-choice letters, numbers with relative tolerance 1e-4, element-wise tuples, intervals,
    sets, lists and matrices); only what they cannot settle goes to math-verify in a killable
    worker process. The whole call's symbolic work shares one deadline of ``timeout`` seconds;
    past it the answer counts as wrong. ``include_percentage`` keeps the harness rule that
    ``50``, ``50\\%`` and ``0.5`` are all equal. Safe to call from threads and worker processes.
    """
    if pred is None:
        return False
    deadline = time.monotonic() + timeout
    try:
        return _equiv(pred, gold, deadline, include_percentage)
    except RecursionError:  # tuples nested hundreds deep; no real answer looks like that
        return False


def _equiv(pred: str, gold: str, deadline: float, include_percentage: bool) -> bool:
    """One comparison; recursive for the elements of structured answers."""
    if not pred.strip():
        return False
    if pred.strip() == gold.strip():
        return True
    if len(pred) > MAX_ANSWER_CHARS or len(gold) > MAX_ANSWER_CHARS:
        return False
    pred_norm = _unwrap(_drop_short_lhs(_normalise(pred)))
    gold_norm = _unwrap(_drop_short_lhs(_normalise(gold)))
    pred_key, gold_key = _canonical(pred_norm), _canonical(gold_norm)
    if not pred_key or not gold_key:
        return False
    if pred_key == gold_key:
        return True
    if gold_norm in _CHOICES:
        return _choice_matches(pred_norm, gold_norm)
    pred_number = _as_number(re.sub(r"\s+", "", pred_norm))
    gold_number = _as_number(re.sub(r"\s+", "", gold_norm))
    if pred_number is not None and gold_number is not None:
        return _numbers_match(pred_number, gold_number, include_percentage)
    structured = _compare_structures(pred_norm, gold_norm, deadline, include_percentage)
    if structured is not None:
        return structured
    return _symbolic_equal(gold_norm, pred_norm, deadline)


def _compare_structures(
    pred: str, gold: str, deadline: float, include_percentage: bool
) -> bool | None:
    """Element-wise verdict when both answers have the same structure, else None."""
    pred_parts, gold_parts = _structure(pred), _structure(gold)
    if pred_parts is None or gold_parts is None:
        return None
    (pred_kind, pred_items), (gold_kind, gold_items) = pred_parts, gold_parts
    if pred_kind != gold_kind:
        return None
    if len(pred_items) != len(gold_items):
        return False
    if pred_kind in _ORDERED_KINDS or pred_kind.startswith("matrix"):
        return all(
            _equiv(p, g, deadline, include_percentage)
            for p, g in zip(pred_items, gold_items, strict=True)
        )
    return _match_unordered(pred_items, gold_items, deadline, include_percentage)


def _match_unordered(
    preds: list[str], golds: list[str], deadline: float, include_percentage: bool
) -> bool:
    """Sets and bare lists (``x = 1, 2``): every element pairs with a distinct gold element."""
    remaining = list(golds)
    for pred in preds:
        match = next(
            (
                i
                for i, gold in enumerate(remaining)
                if _equiv(pred, gold, deadline, include_percentage)
            ),
            None,
        )
        if match is None:
            return False
        del remaining[match]
    return True


def _symbolic_equal(gold: str, pred: str, deadline: float) -> bool:
    """Ask the worker process; False once the deadline has passed."""
    remaining = deadline - time.monotonic()
    return remaining > 0 and _worker().equal(gold, pred, remaining)


# ---------------------------------------------------------------------------------------------
# Worker process (see the module docstring for why)
# ---------------------------------------------------------------------------------------------


class _SymbolicWorker:
    """Client side of the zygote + worker pair: one request at a time, kill on timeout."""

    _BOOT = "import psr.grading as grading; grading._zygote_main()"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._zygote: subprocess.Popen[bytes] | None = None
        self._worker_pid: int | None = None
        self._pending = b""
        self._request_id = 0

    def equal(self, gold: str, pred: str, timeout: float) -> bool:
        """math-verify's verdict within ``timeout`` seconds (not counting worker startup).

        A dead zygote (its pipe closed) is restarted and asked once more; a worker that is
        still busy at the deadline is killed and the answer counts as not equal.
        """
        with self._lock:
            for _attempt in range(2):
                self._ensure_ready()
                deadline = time.monotonic() + timeout
                self._request_id += 1
                if self._send({"id": self._request_id, "gold": gold, "pred": pred}):
                    reply = self._read_message("id", self._request_id, deadline)
                    if reply is not None:
                        return bool(reply["equal"])
                if self._zygote is not None:
                    self._kill_worker()
                    return False
            return False

    def _ensure_ready(self) -> None:
        """Start the zygote if needed and wait for a worker's ready line."""
        if self._zygote is None or self._zygote.poll() is not None:
            self._stop_zygote()
            self._start_zygote()
        if self._worker_pid is None:
            ready = self._read_message("ready", None, time.monotonic() + _STARTUP_TIMEOUT_S)
            if ready is None:
                self._stop_zygote()
                raise RuntimeError("psr.grading: the symbolic grading process did not start")
            self._worker_pid = int(ready["ready"])

    def _start_zygote(self) -> None:
        """A fresh interpreter that can import this package even when it is not installed."""
        package_root = str(Path(__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._zygote = subprocess.Popen(
            [sys.executable, "-c", self._BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def _stop_zygote(self) -> None:
        """Kill the worker and the zygote, and close the pipes."""
        self._kill_worker()
        if self._zygote is not None:
            self._zygote.kill()
            self._zygote.wait()
            for pipe in (self._zygote.stdin, self._zygote.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()
        self._zygote = None

    def _send(self, message: dict[str, object]) -> bool:
        """Write one request line; False (and the zygote forgotten) if its pipe is broken."""
        assert self._zygote is not None and self._zygote.stdin is not None
        try:
            self._zygote.stdin.write(json.dumps(message).encode() + b"\n")
            self._zygote.stdin.flush()
        except OSError:
            self._stop_zygote()
            return False
        return True

    def _read_message(self, key: str, value: object, deadline: float) -> dict[str, object] | None:
        """Next JSON line holding ``key`` (with ``value`` unless None).

        Lines that don't match are stale: replies of a killed worker, or of a request whose
        caller was interrupted (e.g. by KeyboardInterrupt) before reading its reply.
        """
        if self._zygote is None or self._zygote.stdout is None:
            return None
        fd = self._zygote.stdout.fileno()
        while True:
            line, newline, rest = self._pending.partition(b"\n")
            if newline:
                self._pending = rest
                message = _loads(line)
                if message is not None and key in message:
                    if value is None or message[key] == value:
                        return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                self._stop_zygote()
                return None
            self._pending += chunk

    def _kill_worker(self) -> None:
        """Kill the stuck worker; the zygote forks a fresh one at once."""
        if self._worker_pid is not None:
            try:
                os.kill(self._worker_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._worker_pid = None
        self._pending = b""


def _loads(line: bytes) -> dict[str, object] | None:
    """A JSON object, or None for anything else (such as a line cut short by a kill)."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


_WORKER_LOCK = threading.Lock()
_WORKER: _SymbolicWorker | None = None


def _worker() -> _SymbolicWorker:
    """The process-wide client, created on first use (no process starts before that)."""
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _SymbolicWorker()
        return _WORKER


def _forget_worker_after_fork() -> None:
    """A forked child must not share the parent's pipes or (possibly held) locks."""
    global _WORKER, _WORKER_LOCK
    _WORKER = None
    _WORKER_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_worker_after_fork)


def _zygote_main() -> None:
    """Import math-verify once, then keep one forked worker alive until the client goes away."""
    import math_verify  # noqa: F401  (imported here so forked workers start warm)

    logging.disable(logging.CRITICAL)
    hangup = select.poll()
    hangup.register(0, 0)  # no events asked for: poll still reports POLLHUP / POLLERR
    while True:
        pid = os.fork()
        if pid == 0:
            _worker_main()
        if not _supervise(pid, hangup):
            return


def _supervise(pid: int, hangup: select.poll) -> bool:
    """Wait for the worker; True to fork a new one (it was killed), False to stop.

    The client's end of the pipe closing means it exited or died. The worker may then be deep
    in a C-level computation (a huge integer power) that nothing else would ever stop, so the
    zygote kills it. Polling every 50 ms also bounds how late a replacement worker starts.
    """
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WIFSIGNALED(status)
        if hangup.poll(50):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return False


def _worker_main() -> NoReturn:
    """Answer one JSON request per line until stdin closes."""
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    os.write(1, json.dumps({"ready": os.getpid()}).encode() + b"\n")
    for line in sys.stdin.buffer:
        request = json.loads(line)
        equal = _math_verify_equal(request["gold"], request["pred"])
        os.write(1, json.dumps({"id": request["id"], "equal": equal}).encode() + b"\n")
    os._exit(0)





def _math_verify_equal(gold: str, pred: str) -> bool:
    """math-verify's verdict, then the harness's numeric check ``isclose(N(a), N(b))``."""
    from math_verify import parse, verify

    try:
        config = _extraction_config()
        gold_parsed = parse(f"${gold}$", config, parsing_timeout=None)  # type: ignore[arg-type]
        pred_parsed = parse(f"${pred}$", config, parsing_timeout=None)  # type: ignore[arg-type]
        if not gold_parsed or not pred_parsed:
            return False
        if verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return True
        return _numerically_close(gold_parsed[0], pred_parsed[0])
    except Exception:
        return False


@functools.cache
def _extraction_config() -> tuple[object, ...]:
    """math-verify's default targets, minus its unit stripping: its unit list has single letters
    (``m``, ``s``, ``g``), so ``2m`` would equal ``2``; ``_strip_units`` handles units instead."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, LatexNormalizationConfig

    normalization = LatexNormalizationConfig(
        basic_latex=True,
        units=False,
        malformed_operators=True,
        nits=True,
        boxed="all",
        equations=False,
    )
    return (LatexExtractionConfig(normalization_config=normalization), ExprExtractionConfig())


def _numerically_close(gold: object, pred: object) -> bool:
    """Both sides are constant expressions whose values agree to ``NUMERIC_REL_TOL``."""
    import sympy

    if not isinstance(gold, sympy.Expr) or not isinstance(pred, sympy.Expr):
        return False
    if gold.free_symbols or pred.free_symbols:
        return False
    gold_value, pred_value = complex(sympy.N(gold)), complex(sympy.N(pred))
    return _complex_close(gold_value, pred_value)


def _complex_close(a: complex, b: complex) -> bool:
    if not all(math.isfinite(x) for x in (a.real, a.imag, b.real, b.imag)):
        return False
    return abs(a - b) <= NUMERIC_REL_TOL * max(abs(a), abs(b))
