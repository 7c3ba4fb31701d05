from evolvelm.refine.filters import FilterContext, agreement, dedup, length, oracle, run_chain, vote
from evolvelm.types import Sample


def s(completion, k=0, prompt="Cabc=", truth="abc"):
    return Sample(round=1, skill="copy", difficulty=3, prompt=prompt, completion=completion, model_version="v",
                  seed=k, k=k, temperature=1.0, mean_logprob=-0.1, true_answer=truth)


CTX = FilterContext(samples_per_problem=5, vote_agreement=0.6)


def test_length_drops_implausible_lengths():
    assert [v.kept for v in length([s("abc"), s("ab"), s("abcd")], CTX)] == [True, False, False]


def test_oracle_uses_the_task_checker():
    assert [v.kept for v in oracle([s("abc"), s("abd")], CTX)] == [True, False]


def test_vote_keeps_the_majority_only_when_agreement_is_enough():
    five = [s("abc", 0), s("abc", 1), s("abc", 2), s("abd", 3), s("abx", 4)]
    assert [v.kept for v in vote(five, CTX)] == [True, True, True, False, False]
    strict = FilterContext(samples_per_problem=5, vote_agreement=1.0)
    assert not any(v.kept for v in vote(five, strict))
    # agreement counts all k drawn, so survivors of an earlier filter cannot win alone
    assert [v.kept for v in vote([s("abc", 0), s("abc", 1)], CTX)] == [False, False]


def test_vote_breaks_ties_by_earliest_sample():
    tie = [s("abd", 0), s("abc", 1), s("abc", 2), s("abd", 3)]
    ctx = FilterContext(samples_per_problem=4, vote_agreement=0.5)
    assert [v.kept for v in vote(tie, ctx)] == [True, False, False, True]


def test_dedup_keeps_first_occurrence():
    verdicts = dedup([s("abc", 0), s("abc", 1), s("abd", 2)], CTX)
    assert [v.kept for v in verdicts] == [True, False, True] and "duplicate of" in verdicts[1].reason


def test_chain_records_every_verdict_and_counts():
    samples = [s("abc", 0), s("ab", 1), s("abc", 2), s("abc", 3), s("abd", 4)]
    counts = run_chain(["length", "vote", "dedup"], samples, CTX)
    assert counts == {"length": {"kept": 4, "dropped": 1}, "vote": {"kept": 3, "dropped": 1},
                      "dedup": {"kept": 1, "dropped": 2}}
    assert [x.kept for x in samples] == [True, False, False, False, False]
    assert [v.filter for v in samples[0].verdicts] == ["length", "vote", "dedup"]
    assert [v.filter for v in samples[1].verdicts] == ["length"]  # dropped early, judged no further


def test_agreement_drops_a_skill_whose_problems_mostly_lack_a_label():
    ctx = FilterContext(samples_per_problem=5, vote_agreement=0.6, min_agreement=0.5, problems={"copy": 4, "reverse": 1})
    survivors = [s("abc", prompt="Cabc="), s("abd", prompt="Cabd=", truth="abd"),
                 Sample(round=1, skill="reverse", difficulty=3, prompt="Rabc=", completion="cba", model_version="v",
                        seed=0, k=0, temperature=0.0, mean_logprob=0.0, true_answer="cba")]
    verdicts = agreement(survivors, ctx)
    assert [v.kept for v in verdicts] == [True, True, True]  # copy: 2 of 4 problems = 0.5
    ctx = FilterContext(5, 0.6, min_agreement=0.75, problems={"copy": 4, "reverse": 1})
    verdicts = agreement(survivors, ctx)
    assert [v.kept for v in verdicts] == [False, False, True] and "0.50 of problems" in verdicts[0].reason
