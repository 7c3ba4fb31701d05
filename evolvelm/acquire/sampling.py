"""Easy-to-hard acquisition: the model labels problems just beyond what it was trained on."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

from tqdm import tqdm

from evolvelm.tasks import get_task, retry_prompt
from evolvelm.types import Problem, Sample, content_id

CHUNK = 512  # prompts per backend call


def derive_seed(*parts: object) -> int:
    """A 31-bit seed determined by `parts` alone (e.g. run seed, round, problem id, k)."""
    return int(content_id("seed", *parts), 16) % 2**31


def draw_problems(skill: str, difficulty: int, n: int, run_seed: int, rnd: int, held_out: frozenset[str]) -> list[Problem]:
    """`n` training problems for one round, none of them in the held-out splits."""
    return get_task(skill).problems(difficulty, n, derive_seed(run_seed, rnd, skill, difficulty), exclude=held_out)


def sample(backend, problems: list[Problem], rnd: int, run_seed: int, k: int, temperature: float,
           greedy_first: bool, quiet: bool = False, member: int = 0, variants: int = 0) -> list[Sample]:
    """Draw k answers per problem, then with `variants` a greedy answer to each of that many equivalent
    prompts (the task's `variant`), mapped back to an answer to the problem itself and stored under it,
    with the prompt seen in `context`. Answer j of problem p is seeded by (run seed, round, p, j), and by
    the `member` of the voting population too when it is not the model itself (member 0).

    Samples come back ordered by problem, then j. The true answer is recorded for the
    benchmark's label-precision measurement; unsupervised filters never read it.
    """
    def asked(p: Problem, j: int) -> tuple[str, Callable[[str], str]]:
        return (p.prompt, str) if j < k else get_task(p.skill).variant(p.prompt, j - k + 1)

    jobs = [(p, j) for p in problems for j in range(k + variants)]
    out: list[Sample] = []
    bar = tqdm(total=len(jobs), desc=f"acquire round {rnd}" + (f" (voter {member})" if member else ""),
               disable=quiet, leave=False)
    for i in range(0, len(jobs), CHUNK):
        chunk = jobs[i:i + CHUNK]
        for greedy in (True, False):  # greedy and sampled answers go to the backend separately
            part = [(p, j) for p, j in chunk if (j >= k or (greedy_first and j == 0)) == greedy]
            if not part:
                continue
            temp = 0.0 if greedy else temperature
            seeds = [derive_seed(run_seed, rnd, p.id, j, *([member] if member else [])) for p, j in part]
            max_new = max(get_task(p.skill).max_new_tokens(p.difficulty) for p, _ in part)
            seen = [asked(p, j) for p, j in part]
            for (p, j), (prompt, back), g in zip(part, seen, backend.generate([q for q, _ in seen], seeds, temp, max_new)):
                out.append(Sample(round=rnd, skill=p.skill, difficulty=p.difficulty, prompt=p.prompt,
                                  completion=back(g.text), model_version=backend.version, seed=g.seed, k=j,
                                  temperature=temp, mean_logprob=sum(g.logprobs) / max(1, len(g.logprobs)),
                                  true_answer=p.answer, member=member, context="" if prompt == p.prompt else prompt,
                                  rendered=g.rendered))
        bar.update(len(chunk))
    bar.close()
    position = {(p.skill, p.prompt): i for i, p in enumerate(problems)}
    return sorted(out, key=lambda s: (position[(s.skill, s.prompt)], s.k))


def retry_with_feedback(backend, samples: list[Sample], rnd: int, run_seed: int, quiet: bool = False) -> list[Sample]:
    """Second tries (CRITIC / Self-Refine style): every sample the task's executor rejects is answered
    again, greedily, with the failed attempt and the executor's feedback in context. The retry is
    stored under the original prompt (what the model should learn to answer at once), with the
    prompt it actually saw in `context` and k shifted past the first tries."""
    from evolvelm.refine.filters import judged

    failed = [(s, why) for s, (ok, why) in zip(samples, judged(samples)) if not ok]
    shift = 1 + max((s.k for s in samples), default=0)
    out: list[Sample] = []
    for i in tqdm(range(0, len(failed), CHUNK), desc=f"retry round {rnd}", disable=quiet, leave=False):
        chunk = failed[i:i + CHUNK]
        prompts = [retry_prompt(s.prompt, s.completion, why) for s, why in chunk]
        seeds = [derive_seed(run_seed, rnd, s.prompt, s.k, "retry", s.member) for s, _ in chunk]
        max_new = max(get_task(s.skill).max_new_tokens(s.difficulty) for s, _ in chunk)
        for (s, _), prompt, g in zip(chunk, prompts, backend.generate(prompts, seeds, 0.0, max_new)):
            out.append(replace(s, completion=g.text, model_version=backend.version, seed=g.seed, k=s.k + shift,
                               temperature=0.0, mean_logprob=sum(g.logprobs) / max(1, len(g.logprobs)),
                               context=prompt, rendered=g.rendered, verdicts=[], kept=True))
    return out
