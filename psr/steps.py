"""The `Step n: ` solution format the paper trains and searches with.

A solution is a list of step *contents* (no `Step n: ` prefix); numbering is added on rendering
so that rollbacks and renumbering can never produce `Step 1, Step 3`. A step is final when it
holds a `\\boxed{}` (or generation ended with EOS, which the caller knows).
"""

from __future__ import annotations

import re

STEP_MARKER = re.compile(r"(?:^|\n)[ \t]*Step[ \t]+(\d+)[ \t]*:[ \t]?")
# What the generator stops on: the start of the next step's marker.
STOP_STRING = "\nStep "


class StepFormatError(ValueError):
    """A text that should be a `Step n:` solution but is not."""


def render_step(number: int, content: str) -> str:
    return f"Step {number}: {content}"


def join_steps(steps: list[str]) -> str:
    """Render step contents as `Step 1: ...\\nStep 2: ...` (numbering always 1..n)."""
    return "\n".join(render_step(i, s) for i, s in enumerate(steps, start=1))


def prefix_text(steps: list[str]) -> str:
    """The text of earlier steps as a generation prefix: each step line ends with a newline, so
    the next step starts on a fresh line (a token boundary every BPE pre-tokenizer respects)."""
    return "".join(render_step(i, s) + "\n" for i, s in enumerate(steps, start=1))


def split_steps(text: str) -> list[str]:
    """Split a `Step n:` solution into step contents. Text before the first marker is dropped
    only if it is whitespace; otherwise the text has no step structure and we raise."""
    if not text or not text.strip():
        raise StepFormatError("empty solution")
    matches = list(STEP_MARKER.finditer(text))
    if not matches:
        raise StepFormatError(f"no 'Step n:' markers in solution: {text[:80]!r}")
    if text[: matches[0].start()].strip():
        raise StepFormatError(f"text before 'Step 1:': {text[: matches[0].start()][:80]!r}")
    steps = []
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt else len(text)
        steps.append(text[m.end() : end].strip())
    return steps


def renumber(text: str) -> str:
    """Parse and re-render, so markers read 1..n whatever the input numbering was."""
    return join_steps(split_steps(text))


def is_final(step: str) -> bool:
    """A step is final when it states the answer in `\\boxed{}` (also `\\fbox`)."""
    return "\\boxed" in step or "\\fbox" in step


def strip_marker(generated: str) -> str:
    """Content of one generated step: drop a leading `Step k:` marker and anything from the next
    marker on (the generator's stop string may leave a partial one at the end)."""
    text = generated
    m = STEP_MARKER.match(text.lstrip("\n"))
    if m:
        text = text.lstrip("\n")[m.end() :]
    cut = text.find(STOP_STRING)
    if cut >= 0:
        text = text[:cut]
    return text.strip()


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\\$(])")


def segment_solution(solution: str, max_sentences_per_step: int = 2) -> list[str]:
    """Rule-based segmentation of a plain worked solution (GSM8K `answer`, MATH `solution`) into
    steps without changing its content: split on line breaks, then split long paragraphs at
    sentence ends, grouping up to `max_sentences_per_step` sentences. Display math blocks and
    GSM8K calculator annotations stay inside their sentence. The final `#### N` line of GSM8K
    becomes a `\\boxed{N}` step (the only rewrite, since the format requires `\\boxed{}`).
    A LaTeX environment (`\\begin{align*}` ... `\\end{align*}`) is never cut, and everything from
    the first `\\boxed{}` step on is one final step: a search stops at the first boxed step, so a
    remark after the answer (about 1 in 10 MATH solutions) must not become a step of its own."""
    if not solution or not solution.strip():
        raise StepFormatError("empty solution")
    text = solution.strip()
    final = None
    m = re.search(r"\n?####\s*(.+?)\s*$", text)
    if m:
        final = m.group(1).replace(",", "")
        text = text[: m.start()].rstrip()
    steps: list[str] = []
    for para in _join_lead_ins(_paragraphs(text)):
        chunk: list[str] = []
        for sentence in _SENTENCE_END.split(para):
            chunk.append(sentence.strip())
            if len(chunk) >= max_sentences_per_step and not _is_open(" ".join(chunk)):
                steps.append(" ".join(chunk).strip())
                chunk = []
        if " ".join(chunk).strip():
            steps.append(" ".join(chunk).strip())
    if final is not None:
        steps.append(f"The answer is \\boxed{{{final}}}.")
    if not steps:
        raise StepFormatError("solution has no content")
    finals = [i for i, step in enumerate(steps) if is_final(step)]
    if finals and finals[0] < len(steps) - 1:
        steps[finals[0] :] = [" ".join(steps[finals[0] :])]
    return steps


_ENV_OPEN = re.compile(r"\\begin\{")
_ENV_CLOSE = re.compile(r"\\end\{")


def _is_open(text: str) -> bool:
    """Inside an unfinished `$$`, `\\[`, `\\begin{...}` or Asymptote `[asy]` block (cutting there
    would split the math or the figure code)."""
    return (
        text.count("$$") % 2 == 1
        or text.count("\\[") > text.count("\\]")
        or len(_ENV_OPEN.findall(text)) > len(_ENV_CLOSE.findall(text))
        or text.count("[asy]") > text.count("[/asy]")
    )


def _join_lead_ins(paragraphs: list[str]) -> list[str]:
    """A paragraph ending in ':' introduces the next one (a list heading such as
    `1. **Cost of the pens:**`, or `Square both sides:` before its display math), and display math
    on its own lines continues the sentence before it (`... must satisfy` / `\\[a^2 + b^2 = 1.\\]`):
    one step each time."""
    out: list[str] = []
    for para in paragraphs:
        lead_in = out and out[-1].rstrip("*_ ").endswith(":")  # `**Heading:**` in Markdown too
        if lead_in or (out and para.startswith(("\\[", "$$", "\\begin{"))):
            out[-1] += " " + para
        else:
            out.append(para)
    return out


def _paragraphs(text: str) -> list[str]:
    """Lines, but a `$$ ... $$` / `\\[ ... \\]` / `\\begin{..} ... \\end{..}` block spanning lines
    stays one paragraph."""
    out: list[str] = []
    buf: list[str] = []
    for line in text.split("\n"):
        buf.append(line.strip())
        if not _is_open(" ".join(buf)):
            joined = " ".join(buf).strip()
            if joined:
                out.append(joined)
            buf = []
    joined = " ".join(buf).strip()
    if joined:
        out.append(joined)
    return out
