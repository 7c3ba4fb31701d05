from dataclasses import replace

from evolvelm.refine.filters import (FilterContext, agreement, confidence, dedup, length, model_vote, oracle,
                                     random_pick, run_chain, unanimous_share, vote)
from evolvelm.types import Sample


def s(completion, k=0, prompt="Cabc=", truth="abc", member=0):
    return Sample(round=1, skill="copy", difficulty=3, prompt=prompt, completion=completion, model_version=f"v{member}",
                  seed=k, k=k, temperature=1.0, mean_logprob=-0.1, true_answer=truth, member=member)


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


def test_agreement_drops_a_difficulty_whose_problems_mostly_lack_a_label():
    ctx = FilterContext(samples_per_problem=5, vote_agreement=0.6, min_agreement=0.5,
                        problems={("copy", 3): 4, ("reverse", 3): 1})
    survivors = [s("abc", prompt="Cabc="), s("abd", prompt="Cabd=", truth="abd"),
                 Sample(round=1, skill="reverse", difficulty=3, prompt="Rabc=", completion="cba", model_version="v",
                        seed=0, k=0, temperature=0.0, mean_logprob=0.0, true_answer="cba")]
    verdicts = agreement(survivors, ctx)
    assert [v.kept for v in verdicts] == [True, True, True]  # copy: 2 of 4 problems = 0.5
    ctx = FilterContext(5, 0.6, min_agreement=0.75, problems={("copy", 3): 4, ("reverse", 3): 1})
    verdicts = agreement(survivors, ctx)
    assert [v.kept for v in verdicts] == [False, False, True] and "copy 3: 0.500 of problems" in verdicts[0].reason


def test_agreement_judges_each_difficulty_on_its_own():
    four = replace(s("abcd", prompt="Cabcd=", truth="abcd"), difficulty=4)
    ctx = FilterContext(1, 1.0, min_agreement=0.5, problems={("copy", 3): 2, ("copy", 4): 10})
    assert [v.kept for v in agreement([s("abc"), s("abd", prompt="Cabd=", truth="abd"), four], ctx)] == [True, True, False]


def test_vote_counts_each_model_among_its_own_samples():
    # member 0 agrees with itself on "abc"; member 1 splits, so only member 0's samples pass
    samples = [s("abc", 0), s("abc", 1), s("abd", 0, member=1), s("abc", 1, member=1)]
    verdicts = vote(samples, FilterContext(samples_per_problem=2, vote_agreement=1.0))
    assert [v.kept for v in verdicts] == [True, True, False, False]


def test_model_vote_keeps_a_label_when_m_of_n_models_agree():
    samples = [s("abc", member=0), s("abc", member=1), s("abd", member=2),   # 2 of 3 say abc
               s("xy", prompt="Cxyz=", truth="xyz", member=0)]              # 1 of 3: the others abstain
    kept = lambda m: [v.kept for v in model_vote(samples, FilterContext(1, 1.0, members=3, model_vote_min=m))]
    assert kept(2) == [True, True, False, False]
    assert kept(0) == kept(3) == [False, False, False, False]  # 0 = all three
    assert kept(1) == [True, True, True, True]
    assert "2 of 3 models" in model_vote(samples, FilterContext(1, 1.0, members=3))[0].reason


def test_model_vote_uses_each_models_majority():
    samples = [s("abc", 0), s("abc", 1), s("abd", 2), s("abc", 0, member=1), s("abd", 1, member=1), s("abd", 2, member=1)]
    verdicts = model_vote(samples, FilterContext(3, 1.0, members=2, model_vote_min=1))
    assert [v.kept for v in verdicts] == [True, True, True, True, True, True]  # each answer is one model's majority
    verdicts = model_vote(samples, FilterContext(3, 1.0, members=2, model_vote_min=2))
    assert not any(v.kept for v in verdicts)


def test_agreement_guards_diversity_too():
    same = [s("aaa", prompt=f"C{x}=", truth=x) for x in ("abc", "abd", "abe", "abf")]
    ctx = FilterContext(1, 1.0, min_agreement=0.5, problems={("copy", 3): 4}, min_diversity=0.5)
    verdicts = agreement(same, ctx)
    assert not any(v.kept for v in verdicts) and "0.25 of those labels distinct" in verdicts[0].reason
    assert all(v.kept for v in agreement([s(x, prompt=f"C{x}=", truth=x) for x in ("abc", "abd")], ctx))


def test_unanimous_share():
    assert unanimous_share([s("abc", 0), s("abc", 1, member=1), s("x", prompt="Cx=", truth="x"),
                            s("y", 1, prompt="Cx=", truth="x")]) == 0.5
    assert unanimous_share([]) == 0.0


def test_confidence_keeps_the_most_confident_answers_and_random_draws_as_many():
    five = [replace(s(c, k), mean_logprob=lp) for k, (c, lp) in enumerate(
        [("abc", -0.1), ("abd", -2.0), ("abc", -0.3), ("abx", -1.0), ("abc", -0.2)])]
    ctx = replace(CTX, keep_share=0.6)
    verdicts = confidence(five, ctx)
    assert [v.kept for v in verdicts] == [True, False, True, False, True]
    assert verdicts[0].reason.startswith("confidence 0.905, rank 1") and "3 of 5" in verdicts[0].reason
    drawn = random_pick(five, replace(ctx, seed=3))
    assert sum(v.kept for v in drawn) == 3 and [v.kept for v in drawn] == [v.kept for v in random_pick(five, replace(ctx, seed=3))]
    assert any([v.kept for v in random_pick(five, replace(ctx, seed=k))] != [v.kept for v in drawn] for k in range(4, 9))
    # keep_as: as many as the vote keeps of the same answers (3 agree on abc: 3 kept), chosen by confidence
    matched = confidence(five, replace(CTX, keep_as="vote", keep_share=0.0))
    assert sum(v.kept for v in matched) == 3 and "as many as vote keeps: 3 of 5" in matched[0].reason
    assert sum(v.kept for v in random_pick(five, replace(CTX, keep_as="vote"))) == 3
