"""Self-prediction's pieces (evolvelm.introspect): a model's behaviour as property values, the
introspection examples and prompts, and the scores, on the fake backend and literal predictions."""
from evolvelm import introspect
from evolvelm.backends.fake import FakeBackend
from evolvelm.tasks import get_task
from evolvelm.types import Generation


def test_behaviour_reads_each_property_of_the_answers(fake_model):
    backend = FakeBackend(str(fake_model))
    problems = get_task("copy").problems(5, 40, 0) + get_task("reverse").problems(3, 10, 1)
    seen = introspect.behaviour(backend, problems, list(introspect.PROPERTIES))
    greedy = [g.text for g in backend.generate([p.prompt for p in problems], [0] * len(problems), 0.0, 9)]
    assert seen.values["right"] == ["01"[g == p.answer] for g, p in zip(greedy, problems)]
    assert "0" in seen.values["right"][:40] and "1" in seen.values["right"][:40]  # length 5 is one past the fake's level
    assert seen.values["right"][40:] == ["1"] * 10  # length 3 is within it
    assert seen.values["length"] == [str(len(g)) for g in greedy] and seen.values["first"] == [g[:1] or "0" for g in greedy]
    a, b = ([g.text for g in backend.generate([p.prompt for p in problems], [s] * len(problems), 1.0, 9)] for s in (1, 2))
    assert seen.values["agree"] == ["01"[x == y] for x, y in zip(a, b)] and seen.version == backend.version


def test_examples_prompts_and_scores():
    problems = get_task("copy").problems(3, 2, 0)
    seen = introspect.Behaviour("v", {"right": ["1", "0"], "length": ["3", "2"]})
    data = introspect.examples(problems, seen, chat=False)
    assert [(e.prompt, e.answer) for e in data] == [(f"+r{problems[0].prompt}", "1"), (f"+r{problems[1].prompt}", "0"),
                                                     (f"+l{problems[0].prompt}", "3"), (f"+l{problems[1].prompt}", "2")]
    assert introspect.ask("right", "What is 2 + 2?", chat=True).endswith("\n\nWhat is 2 + 2?")
    # asked after the prompt, the model reads the prompt as it does when it answers (the same prefix)
    assert [e.prompt for e in introspect.examples(problems, seen, chat=False, after=True)][:2] == [
        f"{problems[0].prompt}+r", f"{problems[1].prompt}+r"]
    assert introspect.ask("right", "What is 2 + 2?", chat=True, after=True).startswith("What is 2 + 2?\n\nWould your answer to the above")

    class Answers:  # a model whose introspective answers are given
        def generate(self, prompts, seeds, temperature, max_new_tokens):
            return [Generation({"+r": " 1", "+l": "3"}[p[:2]], [], 0) for p in prompts]

    predicted = introspect.predictions(Answers(), problems, ["right", "length"], chat=False)
    assert predicted == {"right": ["1", "1"], "length": ["3", "3"]}
    assert introspect.accuracy(predicted, seen) == {"right": 0.5, "length": 0.5}
    train = introspect.Behaviour("v", {"right": ["0", "0", "1"], "length": ["2", "3", "3"]})
    assert introspect.majority(train, seen) == {"right": 0.5, "length": 0.5}
    # by group: the most common value of the prompt's own group (x: right 0, length 2 of a tie; y: 1 and 3)
    assert introspect.majority(train, seen, ["x", "x", "y"], ["y", "x"]) == {"right": 1.0, "length": 1.0}
    assert introspect.majority(train, seen, ["x", "x", "y"], ["x", "y"]) == {"right": 0.0, "length": 0.0}
