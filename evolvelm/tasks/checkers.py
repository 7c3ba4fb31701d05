"""Checkers for skills defined by data: the one function per skill that says whether a completion answers
a problem right, for training rewards and evaluation alike, and the extractor that votes compare (two
completions vote together when they give the same extracted answer). Each is versioned; the version
is stored beside every score it gives.

    exact         the whole completion, stripped, equals the reference
    normalized    ... after lower case, punctuation dropped and whitespace collapsed
    number        the final number of the completion equals the reference's final number (GSM8K's
                  "#### 72", "1,234", "-3.50", "3/4" and 0.75 are numbers; 145.0 equals 145)
    choice        the option a completion picks (a letter A-E or a digit 1-9, alone or after "answer")
    math          equivalence of LaTeX or plain expressions by math-verify (sympy underneath)
    code          the completion's program passes its row's unit tests in the sandbox (HumanEval, MBPP)
    regex:PAT     the last match of PAT (its first group, if it has one) equals the reference's
    python:M:F    a user function with TRL's reward-function signature: F(prompts, completions,
                  **columns) -> a bool or float per completion; right when it is true or > 0
"""
from __future__ import annotations

import importlib
import re
import string
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

from evolvelm.config import ConfigError


class CheckerError(RuntimeError):
    """A user checker raised: the sample is recorded as a checker error, never scored as wrong.
    `failures`: per completion it raised on, {prompt, completion, error}."""

    def __init__(self, message: str, failures: list[dict] = ()):
        super().__init__(message)
        self.failures = list(failures)


@dataclass(frozen=True)
class Checker:
    """extract: completion or reference -> the answer it gives, canonical ("" when it gives none);
    same: (extracted completion, extracted reference) -> right. A batch function (`python:`) replaces both."""

    name: str
    version: str
    extract: Callable[[str], str]
    same: Callable[[str, str], bool] | None = None
    batch: Callable[..., list] | None = None

    def check_many(self, prompts: list[str], completions: list[str], references: list[str],
                   columns: dict[str, list] | None = None) -> list[bool]:
        """Whether each completion is right; `columns` (every field of the rows, one list per field) go to
        the checkers that read the rows (`code`, `python:`). A batch function that raises is asked again
        one completion at a time, so that the error names the completions it fails on."""
        if self.batch is not None:
            columns = columns or {}
            try:
                return self._rewards(prompts, completions, columns)
            except CheckerError as e:
                failures = []
                for i in range(len(completions)):
                    try:
                        self._rewards(prompts[i:i + 1], completions[i:i + 1], {k: v[i:i + 1] for k, v in columns.items()})
                    except CheckerError as one:
                        failures.append({"prompt": prompts[i], "completion": completions[i], "error": str(one)})
                failures = failures or [{"prompt": p, "completion": c, "error": str(e)} for p, c in zip(prompts, completions)]
                raise CheckerError(f"{failures[0]['error']} (on {len(failures)} of {len(completions)} completions)", failures) from e
        same = self.same or (lambda a, b: a == b)
        # a reference is extracted the same way (GSM8K's worked solutions), or else taken as it is (regex)
        return [bool(a) and same(a, self.extract(r) or r.strip()) for a, r in zip(map(self.extract, completions), references)]

    def _rewards(self, prompts: list[str], completions: list[str], columns: dict[str, list]) -> list[bool]:
        from evolvelm.sandbox import SandboxUnavailable

        try:
            rewards = list(self.batch(prompts=prompts, completions=completions, **columns))
        except (CheckerError, SandboxUnavailable):
            raise
        except Exception as e:  # a user's function: its failure is reported, never counted as wrong answers
            raise CheckerError(f"checker {self.name} raised {type(e).__name__}: {e}") from e
        if len(rewards) != len(completions):
            raise CheckerError(f"checker {self.name} returned {len(rewards)} rewards for {len(completions)} completions")
        return [bool(r) if isinstance(r, bool) else float(r) > 0 for r in rewards]


def _exact(text: str) -> str:
    return text.strip()


_PUNCT = str.maketrans("", "", string.punctuation)


def _normalized(text: str) -> str:
    return " ".join(text.lower().translate(_PUNCT).split())


NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+)?|-?\.\d+")


def _number(text: str) -> str:
    """The final number in `text` as a canonical fraction string ("145", "3/4", "-7/2"); "" when none."""
    found = NUMBER.findall(text.split("####")[-1] if "####" in text else text)
    if not found:
        return ""
    try:
        value = Fraction(found[-1].replace(",", "").replace(" ", ""))
    except (ValueError, ZeroDivisionError):
        return ""
    return str(value)


CHOICE = re.compile(r"(?i:answer|option|choice)\s*(?:is|:)?\s*\(?([A-E1-9])\b|^\(?([A-E1-9])(?:[).:]|$)")


def _choice(text: str) -> str:
    """The option a completion picks: after "answer is"/"option"/"choice", or standing first ("B", "(B)",
    "B."), else the one capital A-E standing alone in it."""
    text = text.strip()
    m = CHOICE.search(text)
    if m:
        return m.group(1) or m.group(2)
    alone = re.findall(r"\b([A-E])\b", text)
    return alone[-1] if len(alone) == 1 else ""


def _math_parse(text: str):
    from math_verify import parse

    delimited = re.search(r"(?<!\\)\$", text) or "\\boxed" in text  # math mode already ("\$5" is a dollar sign)
    return parse(text if delimited else f"${text}$")


def _math_extract(text: str) -> str:
    parsed = _math_parse(text)
    return str(parsed[-1]) if parsed else ""


def _math_same(answer: str, reference: str) -> bool:
    from math_verify import verify

    return verify(_math_parse(reference), _math_parse(answer))


FENCED = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    """The program a completion writes: its last fenced code block, else all of it."""
    blocks = FENCED.findall(text)
    return blocks[-1] if blocks else text


def run_tests(prompts: list[str], completions: list[str], test=None, entry_point=None, test_list=None,
              test_setup_code=None, **_) -> list[bool]:
    """The `code` checker: each completion's program run with its row's unit tests in the sandbox
    (evolvelm.sandbox); right when it exits 0. HumanEval rows (`test`, `entry_point`): the prompt's
    signature first unless the program defines the function itself, then `check(entry_point)`. MBPP rows:
    `test_setup_code`, the program, then the asserts of `test_list`. A sandbox failure raises."""
    from evolvelm import sandbox

    if test is None and test_list is None:
        raise CheckerError("the code checker needs unit tests: a `test` (and `entry_point`) or a `test_list` field")
    programs = []
    for i, completion in enumerate(completions):
        code = extract_code(completion)
        if entry_point is not None and not re.search(rf"^def {re.escape(entry_point[i])}\b", code, re.MULTILINE):
            code = prompts[i] + code  # a completion of the prompt's function body
        tests = list(test_list[i]) if test_list is not None else [test[i], f"check({entry_point[i]})"]
        programs.append("\n".join([test_setup_code[i] if test_setup_code is not None else "", code, *tests]) + "\n")
    results = sandbox.shared().map(programs)
    broken = [r for r in results if r.verdict == "sandbox_error"]
    if broken:
        raise sandbox.SandboxUnavailable(f"the sandbox failed ({broken[0].detail}); no program was scored")
    return [r.verdict == "pass" for r in results]


CHECKERS: dict[str, Checker] = {
    "exact": Checker("exact", "exact-1", _exact),
    "normalized": Checker("normalized", "normalized-1", _normalized),
    "number": Checker("number", "number-1", _number),
    "choice": Checker("choice", "choice-1", _choice),
    "math": Checker("math", "math-verify-1", _math_extract, _math_same),
    "code": Checker("code", "code-1", extract_code, batch=run_tests),
}


def get_checker(spec: str) -> Checker:
    """A checker by name, `regex:PATTERN` or `python:module:function`; anything else names the valid ones."""
    if spec.startswith("regex:"):
        try:
            pattern = re.compile(spec[len("regex:"):])
        except re.error as e:
            raise ConfigError(f"checker {spec!r}: not a regular expression: {e}") from e

        def last_match(text: str) -> str:
            found = list(pattern.finditer(text))
            return "" if not found else (found[-1].group(1) if pattern.groups else found[-1].group(0)).strip()

        return Checker(spec, "regex-1", last_match)
    if spec.startswith("python:"):
        module, _, function = spec[len("python:"):].rpartition(":")
        try:
            fn = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"checker {spec!r}: cannot import {function!r} from {module!r}: {e}") from e
        return Checker(spec, f"python-1:{module}:{function}", str, batch=fn)
    if spec not in CHECKERS:
        raise ConfigError(f"unknown checker {spec!r}; checkers: {sorted(CHECKERS)}, regex:PATTERN, python:module:function")
    return CHECKERS[spec]
