from evolvelm.evaluate.suite import held_out_prompts, split_set
from evolvelm.tasks import TASKS, get_task
from evolvelm.types import Problem


def test_problems_have_the_requested_difficulty_and_a_checked_answer():
    for name, task in TASKS.items():
        for d in (1, 3, 7):
            probs = task.problems(d, 20, seed=1)
            assert len(probs) == 20 and all(p.difficulty == d for p in probs)
            assert all(task.check(p, p.answer) for p in probs)
            lo, hi = task.answer_lengths(d)
            assert all(lo <= len(p.answer) <= hi for p in probs)


def test_literal_answers_and_the_checker():
    assert get_task("reverse").check(Problem("reverse", 3, "Rabc=", "cba"), "cba")
    assert not get_task("reverse").check(Problem("reverse", 3, "Rabc=", "cba"), "abc")
    # reversed addition: 95 + 17 = 112, written least-significant digit first
    p = Problem("addition", 2, "A59+71=", "211")
    assert get_task("addition").check(p, "211") and not get_task("addition").check(p, "112")


def test_held_out_splits_are_fixed_disjoint_and_excluded_from_training_draws():
    task = get_task("copy")
    test = split_set(task, 5, "test", 50, seed=7)
    assert [p.prompt for p in test] == [p.prompt for p in split_set(task, 5, "test", 50, seed=7)]
    dev = split_set(task, 5, "dev", 50, seed=7)
    assert not {p.prompt for p in test} & {p.prompt for p in dev}
    held = held_out_prompts(task, 5, 50, 50, seed=7)[5]
    train = task.problems(5, 500, seed=3, exclude=held)
    assert len(train) == 500 and not {p.prompt for p in train} & held


def test_tiny_difficulties_do_not_loop_forever():
    assert len(get_task("addition").problems(1, 1000, seed=0)) == 100  # only 10 x 10 distinct prompts
