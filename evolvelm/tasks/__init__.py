"""Built-in skills. Each task generates problems by difficulty and owns the one checker that scores
a completion, for training rewards and for evaluation alike.

Prompt formats (character level, one token per character):
    copy      "C" + s + "="            -> s
    reverse   "R" + s + "="            -> s reversed
    addition  "A" + a + "+" + b + "="  -> a + b, all numbers written least-significant digit first,
                                          each digit after an index hint: the letter of its place,
                                          counted on from a letter drawn per problem so that the
                                          answer's hints never run past z (up to 25 digits)
                                          (A95+17= with hints from c: Ac5d9+c7d1= -> c2d1e1, i.e. 112)
    echo      s + "="                  -> s (letters, digits and "+"; no marker: the modular base's pretraining)
    shift     "S" + s + "="            -> every letter of s moved one on (z -> a)
    expr      "E" + n + "="            -> a Python expression using only the digits 0-5 and "+" that
                                          evaluates to n (e.g. E4097= -> 4055+42); the checker executes
                                          it in the sandbox (evolvelm.sandbox), and needs no true label
    chain     "M" + digits + "="        -> the sum of the digits modulo 10, after a scratchpad that adds
                                          them in any order, each step the digit and the running sum
                                          (M352= -> 33,58,20|0 or 22,57,30|0); difficulty = digits - 1;
                                          only the answer after the last "|" is checked (`final`): many
                                          rationales reach it, which is what votes over samples need
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Callable

from evolvelm.types import Problem

LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"
ECHO_CHARS = LETTERS + DIGITS + "+"


@dataclass(frozen=True)
class Task:
    """A skill: how to draw a problem of a given difficulty, and how to check an answer."""

    name: str
    make: Callable[[int, random.Random], tuple[str, str]]   # (difficulty, rng) -> (prompt, answer)
    answer_lengths: Callable[[int], tuple[int, int]]         # difficulty -> plausible (min, max) answer length
    space: Callable[[int], int]                              # difficulty -> number of distinct prompts
    version: str = "exact-1"                                 # stored beside every score the checker gives
    judge: Callable[[list[Problem], list[str]], list[tuple[bool, str]]] | None = None
    # judge: a checker that needs no true label (it executes the answer); returns (right, feedback) per
    # answer. None: the checker is exact match with the true answer.
    final: Callable[[str], str] | None = None
    # final: the answer a completion gives, when it writes reasoning first (a scratchpad); the checker
    # and votes compare only this. None: the whole completion is the answer.
    rationale: Callable[[str, str], bool] | None = None
    # rationale: (prompt, completion) -> whether the scratchpad itself is right (benchmark measurement only)
    write_answer: Callable[[str], str] | None = None
    # write_answer: a final answer -> the completion that gives it with no reasoning (`bare`). None: the answer
    variant: Callable[[str, int], tuple[str, Callable[[str], str]]] | None = None
    # variant: (prompt, i) -> the same problem asked another way (i = 1, 2, ...), and the map from an answer
    # to it back to an answer to the prompt. None: the skill has no equivalent prompts (`acquire.variants`).
    max_tokens: Callable[[int], int] | None = None
    # max_tokens: difficulty -> tokens generated at most per answer. None: the longest plausible answer in
    # characters, plus 2 (no token is shorter than a character; room for the end of turn)
    checker: Callable[[list[Problem], list[str]], list[bool]] | None = None
    # checker: the skill's own checker against the true answers (skills from data: evolvelm.tasks.checkers).
    # None: exact match of `answer_of`
    hint: Callable[[str, str], str] | None = None
    # hint: (prompt, answer) -> STaR's rationalisation prompt. None: `hint_prompt`
    fixed: tuple = ()
    # fixed: skills from data: their drawn splits, ((split, difficulty, problems), ...); eval reads
    # test and dev from here, the semisup recipes the labeled set
    executes: bool = False
    # executes: the checker runs the answer in the sandbox (skills from data with the `code` checker;
    # built-ins with a `judge` do too)
    one_answer: bool = True
    # one_answer: one final answer per problem is right (the checker compares `answer_of` for equality),
    # so an answer whose final answer differs from a right one is wrong. Skills from data: False for the
    # checkers that accept several (`math`, `code`, `python:`); a skill with a `judge` never has one

    def answer_of(self, completion: str) -> str:
        """The final answer a completion gives (all of it, unless the task writes a scratchpad)."""
        return self.final(completion) if self.final else completion

    def bare(self, completion: str) -> str | None:
        """`completion` with its reasoning left out: the final answer it gives, written alone (chain:
        "33,58,20|0" -> "|0"; a skill from data: what its checker extracts, "The sum is 1,234." -> "1234").
        None when it gives no answer, or when the task would not read the same answer back from it (a regex
        checker that needs the words around the answer)."""
        answer = self.answer_of(completion)
        alone = self.write_answer(answer) if self.write_answer else answer
        return alone if answer and self.answer_of(alone) == answer else None

    def max_new_tokens(self, difficulty: int) -> int:
        """How many tokens an answer at `difficulty` may take: what generation stops at."""
        return self.max_tokens(difficulty) if self.max_tokens else self.answer_lengths(difficulty)[1] + 2

    def split(self, name: str, difficulty: int | None = None) -> list[Problem]:
        """A skill from data's fixed split (all difficulties, or one)."""
        return [p for n, d, probs in self.fixed if n == name and difficulty in (None, d) for p in probs]

    def problem(self, difficulty: int, rng: random.Random) -> Problem:
        prompt, answer = self.make(difficulty, rng)
        return Problem(self.name, difficulty, prompt, answer)

    def problems(self, difficulty: int, n: int, seed: int, exclude: frozenset[str] = frozenset()) -> list[Problem]:
        """`n` distinct problems of `difficulty` drawn with `seed`, skipping prompts in `exclude`.

        Short difficulties have few distinct prompts; we stop after a bounded number of draws
        rather than loop forever, so fewer than `n` may come back.
        """
        rng = random.Random(f"{self.name}:{difficulty}:{seed}")
        out: dict[str, Problem] = {}
        if self.space(difficulty) == 0:  # a skill from data with no problem of this difficulty
            return []
        for _ in range(20 * n):
            p = self.problem(difficulty, rng)
            if p.prompt not in exclude:
                out.setdefault(p.prompt, p)
            if len(out) == n:
                break
        return list(out.values())

    def check(self, problem: Problem, completion: str) -> bool:
        """The task's single checker, for one answer (see `check_many`)."""
        return self.check_many([problem], [completion])[0]

    def check_many(self, problems: list[Problem], completions: list[str]) -> list[bool]:
        """The task's single checker: the judge if it has one, else exact match with the true answer."""
        if self.judge:
            return [ok for ok, _ in self.judge(problems, completions)]
        if self.checker:
            return self.checker(problems, completions)
        return [self.answer_of(c) == self.answer_of(p.answer) for p, c in zip(problems, completions)]


def _copy(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(LETTERS) for _ in range(d))
    return f"C{s}=", s


def _reverse(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(LETTERS) for _ in range(d))
    return f"R{s}=", s[::-1]


def hinted(digits: str, start: int) -> str:
    """`digits` with an index hint before each: the letters from LETTERS[start] on, z wrapping to a.
    Hints make an operand's place a matter of content rather than of position, which is what lets a
    model without positional encoding line up digits of sums longer than any it was trained on
    (index hints, Zhou et al. 2023). Past 26 digits the hints repeat."""
    return "".join(LETTERS[(start + i) % 26] + c for i, c in enumerate(digits))


def hint_start(places: int, rng: random.Random) -> int:
    """A first hint letter from which `places` hints run straight, never wrapping from z to a (up to
    26 places; past that, from a). Zhou et al. 2024 likewise draw consecutive hints from an ordered set.
    Wrapped hints were the largest gap of the addition ladder (README): the models learned sums whose
    hints wrap far worse than straight ones (at 9 digits 3% vs 51%), so a ladder that kept only right
    labels trained on straight ones alone and could never solve the wrapped quarter to half."""
    return rng.randrange(max(1, 27 - places))


def addition_prompt(a: int, b: int, start: int) -> tuple[str, str]:
    """The hinted reversed addition problem a + b and its answer."""
    return f"A{hinted(str(a)[::-1], start)}+{hinted(str(b)[::-1], start)}=", hinted(str(a + b)[::-1], start)


def operand(d: int, rng: random.Random) -> int:
    """A random number of exactly `d` digits (0-9 for one digit)."""
    return rng.randint(0 if d == 1 else 10 ** (d - 1), 10**d - 1)


def _addition(d: int, rng: random.Random) -> tuple[str, str]:
    a, b = operand(d, rng), operand(d, rng)
    return addition_prompt(a, b, hint_start(d + 1, rng))


def _addition_variant(prompt: str, i: int) -> tuple[str, Callable[[str], str]]:
    """The same sum with hints from another start letter, operands swapped for odd i: variants 1 and 2
    take the first of the other straight starts in an order drawn from the prompt, 3 and 4 the second,
    and so on. An answer to it maps back by writing its digits with the prompt's own hints. A model's
    systematic mistakes, tied to a place or to hint letters, then show as disagreement between the
    answers to equivalent prompts (addition-ladder, README)."""
    a, b = (operand[1::2] for operand in prompt[1:-1].split("+"))  # hint letters at even positions
    start = LETTERS.index(prompt[1])
    places = max(len(a), len(b)) + 1  # of the answer, as `hint_start` counts them
    others = [s for s in range(max(1, 27 - places)) if s != start] or [start]
    random.Random(prompt).shuffle(others)
    new = others[(i - 1) // 2 % len(others)]
    x, y = (b, a) if i % 2 else (a, b)
    return f"A{hinted(x, new)}+{hinted(y, new)}=", lambda answer: hinted(re.sub("[a-z]", "", answer), start)


def _echo(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(ECHO_CHARS) for _ in range(d))
    return f"{s}=", s


def shift_letters(s: str) -> str:
    """Every letter one on in the alphabet, z -> a."""
    return "".join(LETTERS[(LETTERS.index(c) + 1) % 26] for c in s)


def _shift(d: int, rng: random.Random) -> tuple[str, str]:
    s = "".join(rng.choice(LETTERS) for _ in range(d))
    return f"S{s}=", shift_letters(s)


EXPR_DIGITS = "012345"


def expr_answer(n: str) -> str:
    """The canonical answer for target n: every digit split into min(digit, 5) + the rest."""
    a = "".join(str(min(int(c), 5)) for c in n)
    b = "".join(str(int(c) - min(int(c), 5)) for c in n).lstrip("0")
    return a + ("+" + b if b else "")


def _expr(d: int, rng: random.Random) -> tuple[str, str]:
    n = str(rng.randint(1 if d == 1 else 10 ** (d - 1), 10**d - 1))
    return f"E{n}=", expr_answer(n)


def retry_prompt(prompt: str, attempt: str, feedback: str) -> str:
    """The prompt for a second try after the executor rejected `attempt`, with its feedback in
    context, shortened for a character-level model: the value the attempt evaluated to, or "!" when
    it did not run or broke the rules. E4097= -> E4097=4055+43>4098= or E4097=4097>!="""
    m = re.fullmatch(r"evaluates to (\d+), not \d+", feedback)
    return f"{prompt}{attempt}>{m.group(1) if m else '!'}="


def expr_mistake(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer, for teaching the base model to use feedback (zoo training only)."""
    kind = rng.randrange(4)
    if kind == 0:  # one digit off
        i = rng.choice([j for j, c in enumerate(answer) if c != "+"])
        return answer[:i] + rng.choice([c for c in EXPR_DIGITS if c != answer[i]]) + answer[i + 1:]
    if kind == 1 and len(answer) > 1:  # cut short
        return answer[:rng.randrange(1, len(answer))]
    if kind == 2 and "+" in answer:  # the second term with a leading zero (a SyntaxError)
        return answer.replace("+", "+0")
    return str(eval(answer))  # the number itself (digits 6-9 are not allowed, or no split)


def _judge_expr(problems: list[Problem], completions: list[str]) -> list[tuple[bool, str]]:
    """Run each answer as Python in the sandbox; right when it uses only the allowed characters
    and evaluates to the target. Feedback says what went wrong, as an executor would."""
    from evolvelm import sandbox  # lazily: most runs never execute code

    out: list[tuple[bool, str] | None] = [None] * len(problems)
    runnable = []
    for i, c in enumerate(completions):
        bad = sorted(set(c) - set(EXPR_DIGITS + "+"))
        if not c or bad:
            out[i] = (False, f"not allowed: {''.join(bad)!r}" if bad else "empty answer")
        else:
            runnable.append(i)
    values = sandbox.evaluate_expressions([completions[i] for i in runnable])
    for i, (ok, value) in zip(runnable, values):
        target = problems[i].prompt[1:-1]
        if not ok:
            out[i] = (False, value)
        else:
            out[i] = (value == target, "correct" if value == target else f"evaluates to {value}, not {target}")
    return out


def chain_steps(digits: str, order: list[int]) -> str:
    """The scratchpad adding `digits` modulo 10 in `order`: per step the digit added and the running sum."""
    total, steps = 0, []
    for i in order:
        total = (total + int(digits[i])) % 10
        steps.append(f"{digits[i]}{total}")
    return ",".join(steps) + f"|{total}"


def chain_valid(prompt: str, completion: str) -> bool:
    """The scratchpad is right, not only its answer: it adds every digit of the prompt once, in any
    order, every running sum is right, and the answer is the last of them."""
    added = "".join(step[:1] for step in completion.partition("|")[0].split(","))
    return sorted(added) == sorted(prompt[1:-1]) and completion == chain_steps(added, list(range(len(added))))


def chain_final(completion: str) -> str:
    """The answer after the last "|" ("" when the completion never reached one)."""
    return completion.rpartition("|")[2] if "|" in completion else ""


def hint_prompt(prompt: str, answer: str) -> str:
    """STaR's rationalisation prompt: the problem with its answer given as a hint (M352= -> M352?0=)."""
    return f"{prompt[:-1]}?{answer}="


def _chain(d: int, rng: random.Random) -> tuple[str, str]:
    digits = "".join(rng.choice(DIGITS) for _ in range(d + 1))
    return f"M{digits}=", chain_steps(digits, rng.sample(range(d + 1), d + 1))


TASKS: dict[str, Task] = {
    "copy": Task("copy", _copy, lambda d: (d, d), lambda d: 26**d),
    "reverse": Task("reverse", _reverse, lambda d: (d, d), lambda d: 26**d),
    "echo": Task("echo", _echo, lambda d: (d, d), lambda d: len(ECHO_CHARS) ** d),
    "shift": Task("shift", _shift, lambda d: (d, d), lambda d: 26**d),
    "addition": Task("addition", _addition, lambda d: (2 * d, 2 * d + 2),
                     lambda d: max(1, 26 - d) * (100 if d == 1 else (9 * 10 ** (d - 1)) ** 2), "hinted-2",
                     variant=_addition_variant),
    "expr": Task("expr", _expr, lambda d: (d, 2 * d + 1), lambda d: 9 * 10 ** (d - 1), "expr-sandbox-1", _judge_expr),
    "chain": Task("chain", _chain, lambda d: (3 * d + 4, 3 * d + 4), lambda d: 10 ** (d + 1), "final-1",
                  final=chain_final, rationale=chain_valid, write_answer=lambda a: f"|{a}"),
}

# Every character any task can emit; the zoo tokenizer is built from this.
ALPHABET = LETTERS + DIGITS + "CRA+="  # as the first zoo models were built; expr's model adds "E"
CHAIN_ALPHABET = DIGITS + "M=,|?"         # zoo:chain's


def get_task(name: str) -> Task:
    """Look a task up by name, with the valid names in the error."""
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; valid tasks: {sorted(TASKS)}")
    return TASKS[name]
