from evolvelm.evaluate.suite import gate, held_out_prompts, paired_gate, splits
from evolvelm.tasks import LETTERS, TASKS, addition_prompt, get_task
from evolvelm.types import Problem


def test_problems_have_the_requested_difficulty_and_a_checked_answer():
    for name, task in TASKS.items():
        for d in (1, 3, 7):
            probs = task.problems(d, 20, seed=1)
            assert len(probs) == min(20, task.space(d)) and all(p.difficulty == d for p in probs)
            assert all(task.check_many(probs, [p.answer for p in probs]))
            lo, hi = task.answer_lengths(d)
            assert all(lo <= len(p.answer) <= hi for p in probs)


def test_literal_answers_and_the_checker():
    assert get_task("reverse").check(Problem("reverse", 3, "Rabc=", "cba"), "cba")
    assert not get_task("reverse").check(Problem("reverse", 3, "Rabc=", "cba"), "abc")
    # reversed addition: 95 + 17 = 112, written least-significant digit first, index hints from c
    prompt, answer = addition_prompt(95, 17, 2)
    assert (prompt, answer) == ("Ac5d9+c7d1=", "c2d1e1")
    p = Problem("addition", 2, prompt, answer)
    assert get_task("addition").check(p, "c2d1e1") and not get_task("addition").check(p, "c1d1e2")
    assert addition_prompt(5, 7, 25) == ("Az5+z7=", "z2a1")  # hints wrap from z to a


def test_drawn_addition_problems_never_wrap_their_hints_up_to_25_digits():
    task, starts = get_task("addition"), set()
    for d in (1, 5, 12, 25):
        for p in task.problems(d, 100, seed=0):
            hints = p.answer[0::2]
            assert hints == LETTERS[LETTERS.index(hints[0]):][:len(hints)], p
            starts.add((d, hints[0]))
    assert {s for d, s in starts if d == 5} == set(LETTERS[:21]) and {s for d, s in starts if d == 25} == {"a"}


def test_addition_variants_ask_the_same_sum_and_their_answers_map_back():
    task = get_task("addition")

    def operands(prompt):  # the digits of each operand (least significant first) and the first hint
        return tuple(x[1::2] for x in prompt[1:-1].split("+")), LETTERS.index(prompt[1])

    for d in (1, 4, 24):
        for p in task.problems(d, 30, seed=2):
            (a, b), _ = operands(p.prompt)
            for i in (1, 2, 3):
                prompt, back = task.variant(p.prompt, i)
                assert prompt == task.variant(p.prompt, i)[0]  # fixed by (prompt, i)
                (x, y), start = operands(prompt)
                assert (x, y) == ((b, a) if i % 2 else (a, b))  # odd i: operands swapped
                answer = addition_prompt(int(x[::-1]), int(y[::-1]), start)[1]  # its true answer, its own hints
                assert back(answer) == p.answer and back(answer[:-1]) != p.answer
    assert all(TASKS[name].variant is None for name in ("copy", "reverse", "chain"))


def test_held_out_splits_are_fixed_disjoint_and_excluded_from_training_draws():
    task = get_task("copy")
    first = splits(task, 5, 50, 30, seed=7)
    splits.cache_clear()
    again = splits(task, 5, 50, 30, seed=7)
    assert first == again and len(first["test"]) == 50 and len(first["dev"]) == 30
    assert not {p.prompt for p in first["test"]} & {p.prompt for p in first["dev"]}
    held = held_out_prompts(task, 5, 50, 30, seed=7)[5]
    train = task.problems(5, 500, seed=3, exclude=held)
    assert len(train) == 500 and not {p.prompt for p in train} & held


def test_tiny_difficulties_keep_most_prompts_for_training():
    held = held_out_prompts(get_task("reverse"), 1, 100, 50, seed=0)[1]
    assert len(held) == 2 * (26 // 4)  # a quarter of the 26 strings of length 1 per split
    assert len(get_task("reverse").problems(1, 100, seed=1, exclude=held)) == 26 - len(held)


def test_gate_compares_each_solved_difficulty():
    prev = {"copy": {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.5}}
    ok, _ = gate(prev, {"copy": {1: 1.0, 2: 0.98, 3: 1.0, 4: 1.0, 5: 0.1}}, 0.99, 0.04)
    assert ok  # small noise, and an unsolved difficulty may move freely
    ok, reason = gate(prev, {"copy": {1: 0.83, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.9}}, 0.99, 0.04)
    assert not ok and "copy difficulty 1: dev accuracy 1.000 -> 0.830" in reason


def test_paired_gate_counts_problems_that_change_and_asks_for_a_significant_gain():
    before = [True] * 80 + [False] * 20
    after = [True] * 70 + [False] * 10 + [True] * 20  # 20 newly right, 10 newly wrong
    ok, reason = paired_gate(before, after, 0.0, 0.0)
    assert ok and "100 dev problems: 20 newly right, 10 newly wrong (net +10" in reason
    assert paired_gate(before, after, 1.0, 0.0)[0]  # +10 >= 1 x sqrt(30) = 5.5
    assert not paired_gate(before, after, 2.0, 0.0)[0]  # +10 < 2 x sqrt(30) = 11.0
    assert not paired_gate(after, before, 0.0, 0.0)[0]  # a net loss
    assert paired_gate(after, before, 0.0, 0.1)[0]  # within a tolerance of 0.1 x 100 problems
    assert paired_gate(before, before, 1.0, 0.0)[0]  # the same answers: nothing lost, nothing to test


def test_tiny_difficulties_do_not_loop_forever():
    assert len(get_task("shift").problems(1, 1000, seed=0)) == 26  # only 26 distinct prompts


def test_each_skill_sets_how_many_tokens_its_answers_may_take(monkeypatch, tmp_path):
    """A skill's `max_tokens` is what generation stops at, in acquisition and evaluation alike (by
    default: its longest answer in characters + 2)."""
    from dataclasses import replace

    from evolvelm.acquire.sampling import sample
    from evolvelm.backends import fake
    from evolvelm.evaluate.suite import accuracy

    copy = get_task("copy")
    assert copy.max_new_tokens(5) == copy.answer_lengths(5)[1] + 2
    monkeypatch.setitem(TASKS, "copy", replace(copy, max_tokens=lambda d: 2 * d))
    asked = []

    class Recording(fake.FakeBackend):
        def generate(self, prompts, seeds, temperature, max_new_tokens):
            asked.append(max_new_tokens)
            return super().generate(prompts, seeds, temperature, max_new_tokens)

    backend = Recording(str(fake.write(tmp_path / "m", {"copy": 9})))
    sample(backend, get_task("copy").problems(3, 4, seed=0), 1, 0, 2, 1.0, True, True)
    accuracy(backend, ["copy"], {"copy": range(4, 5)}, "test", 4, 4, 0, True)
    assert asked and set(asked) == {6, 8}
