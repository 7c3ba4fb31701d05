"""The synthetic-facts skill: fictional people, documents about them, and questions with exact answers.

Every person has four attributes (hobby, city, employer, field; 16 values each). A first version had
a birth year instead of a hobby: zoo:facts copied four-digit years out of a document 4% of the time
(1991 -> 1911) against 95-100% for words, so years were dropped. A document states all four, one
clause each, in a phrasing drawn per clause from several; a question asks for one attribute
in one of several phrasings. Formats (character level):

    document     "bora kemtal: lives in dulmar; enjoys chess; works for zentek; field law."
    closed book  "Q" + question + "="            e.g. "Qwhere does bora kemtal live?=" -> "dulmar"
    in context   document + "Q" + question + "="  (the same question, with the document before it)

The closed-book prompt is a suffix of the in-context prompt, which is what context distillation
needs: the teacher sees the document, the student sees everything after it.

Question phrasings are split: the first two per attribute (`ASK`) are the ones a model asks itself
when it studies a document; the third (`EVAL`) is never trained on for an injected person and is
what efficacy and retention are measured on. The base model's pretraining population (`POPULATION`)
sees all three, so it knows what each phrasing asks for.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from evolvelm.types import content_id

CHARS = " .?:;Q"  # beyond the zoo alphabet: what documents and questions need
VERSION = "facts-exact-1"

_C, _V = "bdfgklmnprstvz", "aeiou"
VALUES = {
    "hobby": ["chess", "rowing", "pottery", "fencing", "archery", "knitting", "surfing", "cycling", "baking",
              "hiking", "juggling", "painting", "skating", "singing", "sailing", "climbing"],
    "city": ["dulmar", "kessa", "vorn", "talip", "ombre", "risca", "fennow", "quarz", "lumet", "sabor", "tigal",
             "wendor", "pasko", "hirun", "belot", "namik"],
    "employer": ["zentek", "orvia", "malcom", "brisa", "tolvex", "dunmore", "calyx", "pimra", "heston", "vantor",
                 "grelo", "suvik", "ardent", "moxa", "kelpa", "norit"],
    "field": ["chemistry", "botany", "geology", "music", "law", "physics", "history", "poetry", "biology",
              "finance", "medicine", "optics", "zoology", "economics", "sculpture", "robotics"],
}
ATTRIBUTES = list(VALUES)
CLAUSES = {  # document phrasings; {v}: the value
    "hobby": ["enjoys {v}", "hobby is {v}", "spends free time {v}"],
    "city": ["lives in {v}", "home is {v}", "city {v}"],
    "employer": ["works for {v}", "employed by {v}", "employer {v}"],
    "field": ["studies {v}", "researches {v}", "field {v}"],
}
QUESTIONS = {
    "hobby": ["what does {n} enjoy?", "what is the pastime of {n}?", "hobby of {n}?"],
    "city": ["where does {n} live?", "which city is home to {n}?", "home city of {n}?"],
    "employer": ["who employs {n}?", "where does {n} work?", "employer of {n}?"],
    "field": ["what does {n} study?", "what field is {n} in?", "field of {n}?"],
}
ASK, EVAL = (0, 1), (2,)  # question phrasings: asked when studying a document / held out for evaluation


@dataclass(frozen=True)
class Person:
    name: str
    hobby: str
    city: str
    employer: str
    field: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass(frozen=True)
class Question:
    """One question about one person; `answer` is the truth (the benchmark's, never the learner's)."""

    person: str
    attribute: str
    phrasing: int       # index into QUESTIONS[attribute]
    text: str           # e.g. "where does bora kemtal live?"
    answer: str

    @property
    def prompt(self) -> str:
        """The closed-book prompt."""
        return f"Q{self.text}="


def _name(rng: random.Random) -> str:
    syl = lambda: rng.choice(_C) + rng.choice(_V)
    return f"{syl()}{syl()} {syl()}{rng.choice(_C)}{rng.choice(_V)}{rng.choice(_C)}"


def people(n: int, seed: object, exclude: frozenset[str] = frozenset()) -> list[Person]:
    """`n` people with distinct names (none in `exclude`) and attributes drawn from `seed`."""
    rng = random.Random(f"people:{seed}")
    out: dict[str, Person] = {}
    while len(out) < n:
        name = _name(rng)
        if name not in exclude and name not in out:
            out[name] = Person(name, *(rng.choice(VALUES[a]) for a in ATTRIBUTES))
    return list(out.values())


POPULATION_SIZE = 200
POPULATION_SEED = "population"


def population() -> list[Person]:
    """The people the shipped `zoo:facts` model was pretrained on (closed book)."""
    return people(POPULATION_SIZE, POPULATION_SEED)


def document(person: Person, seed: object) -> str:
    """A document stating all four attributes; phrasing and order of its clauses drawn from `seed`.
    Short on purpose: a character-level model pays for every character in attention and compute."""
    rng = random.Random(f"doc:{person.name}:{seed}")
    clauses = [rng.choice(CLAUSES[a]).format(v=person.value(a)) for a in ATTRIBUTES]
    rng.shuffle(clauses)
    return f"{person.name}: {'; '.join(clauses)}."


def questions(person: Person, phrasings: tuple[int, ...]) -> list[Question]:
    """Every attribute of `person`, asked in each of `phrasings`."""
    return [Question(person.name, a, i, QUESTIONS[a][i].format(n=person.name), person.value(a))
            for a in ATTRIBUTES for i in phrasings]


def in_context(doc: str, q: Question) -> str:
    """The prompt with the document before the question (the teacher's, and the upper bound's)."""
    return f"{doc}{q.prompt}"


def check(q: Question, completion: str) -> bool:
    """The one checker: exact match with the attribute's value."""
    return completion == q.answer


def max_answer_length() -> int:
    return max(len(v) for vs in VALUES.values() for v in vs)


def batch_id(seed: int, injection: int) -> str:
    return content_id("facts-batch", seed, injection)
