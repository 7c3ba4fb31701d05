"""Records passed between stages. Plain dataclasses: importing this module never imports torch."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace


def content_id(*parts: object) -> str:
    """A short, stable content hash of `parts` (JSON-encoded). Used for problem and sample ids."""
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class Problem:
    """One task instance. `answer` is the true label; unsupervised stages must not read it."""

    skill: str          # task name, e.g. "copy"
    difficulty: int     # string length or number of digits
    prompt: str         # text fed to the model, e.g. "Cabc="
    answer: str         # ground truth, known to the benchmark only

    @property
    def id(self) -> str:
        return content_id(self.skill, self.difficulty, self.prompt)


@dataclass
class Generation:
    """One completion from a backend."""

    text: str                   # decoded completion, special tokens stripped
    logprobs: list[float]       # per generated token (incl. end-of-sequence): natural log, under the model at temperature 1
    seed: int                   # the seed that produced it
    rendered: str = ""          # the prompt as the model read it (chat template, special tokens)
    tokens: list[int] = field(default_factory=list)  # the generated token ids behind `logprobs`
    finished: bool = True       # it ended (end token or stop string) rather than at max_new_tokens
    top: list[list[tuple[int, float]]] = field(default_factory=list)  # per token, the k likeliest (id, logprob)


@dataclass
class Verdict:
    """What one filter decided about one sample."""

    filter: str         # filter name as used in the chain, e.g. "length"
    version: str        # filter implementation version, stored beside the verdict
    kept: bool
    reason: str         # short human-readable why


@dataclass
class Sample:
    """One piece of experience: a model's completion for a problem, with its provenance."""

    round: int
    skill: str
    difficulty: int
    prompt: str
    completion: str             # the model's answer, used as the training label when kept
    model_version: str          # content hash of the weights that produced it
    seed: int                   # generation seed, derived from (run seed, round, problem, k)
    k: int                      # index of this sample among the k drawn for its problem
    temperature: float          # 0 = greedy
    mean_logprob: float         # mean per-token log-probability of the completion
    true_answer: str            # benchmark-only; used for label precision, never by unsupervised filters
    member: int = 0             # which model of the voting population answered (0 = the model itself)
    context: str = ""           # what the model saw beyond `prompt`: for a second try, the generated
                                # prompt with the failed attempt and the executor's feedback
    rendered: str = ""          # the text the model read, as its prompt format rendered it (special tokens,
                                # chat template): what `prompt` (or `context`) became
    verdicts: list[Verdict] = field(default_factory=list)
    kept: bool = True           # AND of all verdicts

    @property
    def id(self) -> str:
        return content_id(self.round, self.skill, self.prompt, self.completion, self.seed, self.k, self.member)

    def to_row(self) -> dict:
        row = asdict(self)
        row["id"] = self.id
        return row


@dataclass(frozen=True)
class Example:
    """One training pair; `weight` is its relative sampling probability within the round's mixture."""

    prompt: str
    answer: str
    weight: float = 1.0
    target: object = None       # soft targets (context distillation): a [tokens of answer + 1, vocab] tensor of
                                # probabilities, one row per answer token and end-of-sequence, or a sparse
                                # (probabilities, token ids) pair of [tokens + 1, k] tensors; None: the answer itself


@dataclass(frozen=True)
class Member:
    """One model of a voting population: a model reference (zoo:NAME, a path, relative to the run for
    its own rounds' weights) and the LoRA adapter on it, if any."""

    model: str
    adapter: str | None = None


@dataclass(frozen=True)
class State:
    """What a round's gate kept, as the next round reads it back from the manifest: the model and its
    adapter, its voters, a modular run's modules and router, the ladder's trained level per skill
    and its retry policy (step: difficulties labelled ahead, None: the configured one; strict:
    rollbacks answered with a stricter filter), and the in-context memory the model reads."""

    model: str
    adapter: str | None = None
    voters: tuple[Member, ...] = ()
    modules: dict[str, str] = field(default_factory=dict)
    router: str | None = None
    levels: dict[str, int] = field(default_factory=dict)
    round: int = 0
    step: int | None = None
    strict: int = 0
    memory: str | None = None  # the in-context memory the model reads (semisup.method memory): a labeled-set file

    MODEL_KEYS = ("model", "adapter", "voters", "modules", "router", "memory")  # what an update stage produces

    @classmethod
    def read(cls, info: dict) -> State:
        """The state in a gate's (or an update's) manifest entry; other keys are ignored."""
        names = {f.name for f in fields(cls)}
        known = {k: v for k, v in info.items() if k in names}
        known["voters"] = tuple(Member(**v) for v in known.get("voters", ()))
        return cls(**known)

    def after(self, update: dict, **changes) -> State:
        """This state with the weights an update stage committed (and `changes`)."""
        new = State.read(update)
        return replace(self, **{k: getattr(new, k) for k in self.MODEL_KEYS if k in update}, **changes)

    def info(self) -> dict:
        """As stored in the manifest (JSON)."""
        return {**asdict(self), "voters": [asdict(v) for v in self.voters]}

    @property
    def members(self) -> list[Member]:
        """The voting population: the model itself, then its voters."""
        return [Member(self.model, self.adapter), *self.voters]
