"""Typed configuration: one home per setting, each with its default and a one-line doc.

A recipe is a YAML file of these sections; `key=value` overrides use dotted names
(`update.steps=200`). Unknown keys and values of the wrong type are errors that name the key.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from evolvelm.backends import BACKENDS


class ConfigError(ValueError):
    """A problem with user-supplied configuration; the CLI exits with code 2."""


@dataclass
class ModelConfig:
    path: str = "zoo:copy-reverse"   # a Hugging Face directory, a hub id in the local cache, a .gguf file, or
                                     # zoo:NAME (a shipped tiny model, or zoo:smollm2-135m-instruct)
    backend: str = "hf"              # generation backend: hf | vllm (a GPU) | openai (an OpenAI-compatible endpoint) | fake
    device: str = "auto"             # auto (CUDA when present, else cpu) | cpu | cuda | cuda:N
    dtype: str = "auto"              # auto (float32 on the CPU, bfloat16 on a GPU) | float32 | bfloat16 | float16
    chat: str = "auto"               # prompts through the model's chat template: auto (when it has one) | on | off
    system: str = ""                 # chat: a system message before every prompt (empty: the template's default)
    stop: list[str] = field(default_factory=list)  # generation also ends at any of these strings (cut from answers)
    batch_size: int = 512            # prompts per generation batch (fewer where they would not fit in 80% of
                                     # a GPU's free memory or half the machine's: hf.generation_bytes per row)
    voters: list[str] = field(default_factory=list)  # independently seeded checkpoints that evolve beside the
                                     # model and vote with it in `model_vote` (zoo:NAME or paths)
    base_url: str = ""               # backend openai: the endpoint, e.g. http://127.0.0.1:8000/v1 (`evolvelm serve
                                     # model.path --allow-loading`: rounds load their adapters into it)
    api_key_env: str = ""            # backend openai: the environment variable holding its key (the key is never stored)
    served_name: str = ""            # backend openai: the endpoint's name for model.path ("": the one it lists)
    concurrency: int = 8             # backend openai: requests in flight at once
    timeout_s: float = 120.0         # backend openai: seconds per request before it is retried (5 retries, backoff)
    vllm_memory: float = 0.4         # backend vllm: share of GPU memory the engine takes (training uses the rest)
    served_check: bool = True        # backends openai, vllm: after each adapter load, probe answers must match this
                                     # process's hf backend on that adapter (evolvelm.backends.check)
    served_tolerance: float = 0.05   # ... in first-token log-probability, at most


@dataclass
class AcquireConfig:
    problems: int = 1000             # new problems per skill and labelled difficulty per round
    samples: int = 5                 # answers drawn per problem (k)
    temperature: float = 1.0         # sampling temperature for answers after the first
    greedy_first: bool = True        # answer 0 of each problem is greedy
    variants: int = 0                # also answer the problem asked this many other ways (skills with
                                     # equivalent prompts: addition), greedily; votes count them beside the k
    step: int = 1                    # difficulties labelled ahead of the trained level per round (adaptive: at most)
    schedule: str = "fixed"          # fixed: label `step` difficulties ahead; adaptive: go on to the next
                                     # difficulty while the answers stay unanimous (never held-out labels)
    adaptive_agreement: float = 0.9  # adaptive: share of problems with unanimous answers needed to go further
    consolidate: int = 0             # also label again the newest self-taught difficulties, up to this many
    feedback: bool = False           # skills with an executor: retry each rejected answer with its feedback in context
    start_level: int = 0             # trained level to start from; 0 = read from the model's evolvelm.json
    curriculum: list[float] = field(default_factory=list)  # semisup: [lo, hi] = of curriculum_pool times as many
                                     # unlabeled problems, those whose predicted success (the model's confidence in
                                     # its greedy answer, recalibrated on its dev answers) lies in the band,
                                     # nearest first; [] = a random draw
    curriculum_pool: int = 4         # candidates per problem acquired when `curriculum` is set


@dataclass
class RefineConfig:
    chain: list[str] = field(default_factory=lambda: ["length", "vote", "dedup"])  # filters in order
    vote_agreement: float = 0.6      # vote: keep the majority answer when this share of samples agree
    min_agreement: float = 0.5       # agreement: drop a difficulty's labels when fewer of its problems hold one
    min_diversity: float = 0.0       # agreement: ... or when fewer of its labels are distinct
    model_vote_min: int = 0          # model_vote: models (of 1 + len(model.voters)) that must agree; 0 = all
    max_per_problem: int = 0         # cap: answers kept per problem at most (0 = no cap)
    nll_quantile: float = 0.3        # consistency: inconsistent answers kept when their mean token NLL is in this
                                     # lowest quantile of the round's inconsistent answers
    keep_share: float = 0.5          # confidence, random: share of the answers reaching them that they keep
    keep_as: str = ""                # confidence, random: keep as many as this filter (e.g. vote) would keep of
                                     # the same answers instead: a comparison at an equal number kept


@dataclass
class UpdateConfig:
    method: str = "full"             # full | lora
    steps: int = 300                 # optimizer steps per round
    batch_size: int = 64             # sequences per step
    lr: float = 1e-3                 # peak learning rate (cosine decay)
    warmup: int = 30                 # linear warm-up steps
    new_weight: float = 0.5          # share of sampling weight for the newest round's labels
    original: int = 2000             # labelled problems per skill from the base model's trained range
    original_weight: float = 0.0     # their own share of sampling weight (0: shared evenly with earlier rounds' labels)
    lora_r: int = 8                  # LoRA rank
    lora_alpha: int = 16             # LoRA scaling numerator


@dataclass
class EvalConfig:
    max_difficulty: int = 16         # evaluate difficulties 1..max_difficulty
    problems: int = 100              # held-out test problems per skill and difficulty (reported); capped at
                                     # a quarter of a difficulty's distinct prompts, as is dev
    dev_problems: int = 50           # dev problems per difficulty (the gate's split, disjoint from test)
    threshold: float = 0.99          # accuracy at which a difficulty counts as solved
    seed: int = 1234                 # fixes the held-out sets


@dataclass
class GateConfig:
    tolerance: float = 0.04          # max drop in dev accuracy on any difficulty the previous model solved
                                     # (semisup: in accuracy pooled over all dev problems)
    retry: bool = True               # after a rollback, retry with half the step, or else a stricter filter
    z: float = 0.0                   # semisup only: the net dev gain must also reach z standard errors of
                                     # the paired difference (evaluate.suite.paired_gate)


@dataclass
class SandboxConfig:
    level: str = "auto"              # auto | subprocess | bwrap: isolation for skills that execute answers
    allow_unsafe: bool = False       # auto without bubblewrap: fall back to subprocess instead of failing
    workers: int = 0                 # programs run in parallel (0 = one per CPU core)
    wall_s: float = 10.0             # wall-clock limit per program (a batch of answers counts as one)
    memory_mb: int = 512             # each process's address space, and (cgroups) all of a program's processes together
    disk_mb: int = 64                # bwrap: what a program's working directory and /tmp may hold together (as root: 64 files per MB too)


@dataclass
class ModulesConfig:
    method: str = "modular"          # modular: one LoRA module per skill, chosen by a router | shared: one
                                     # adapter trained on each skill in turn | replay: shared, with earlier
                                     # rounds' data mixed in (update.new_weight) | full: full fine-tuning in turn
    router: str = "hidden"           # router features: hidden (the base model's hidden states) | chars (n-grams)
    novelty: float = 2.0             # an input farther than this many radii from every module fits none
    examples: int = 2000             # labelled problems of the round's skill arriving per round, spread
                                     # evenly over difficulties 1..eval.max_difficulty
    order: str = "sequence"          # sequence: round r learns skills[r-1] | controller: each round the controller
                                     # chooses the skill, so the module that trains, by expected dev gain
                                     # (evolvelm.controller.choose_module; baselines: controller.policy)


@dataclass
class KnowledgeConfig:
    method: str = "distill"          # distill: KL from the model with the document in context to the model without
                                     # it | sft-qa: SFT on its questions and in-context answers | sft-doc: SFT on the
                                     # raw documents | icl: no update, the document in context (the upper bound) |
                                     # retrieval: no update, the best BM25 match among the stored documents in context
    people: int = 10                 # new people injected per round
    documents: int = 2               # documents per person, each in its own phrasing
    population: int = 200            # people of zoo:facts' pretraining population whose facts eval asks (at most 200)
    anchors: int = 3200              # unrelated inputs (other skills, the pretraining population) held in place
    anchor_weight: float = 0.5       # share of the training mixture on the anchors


@dataclass
class SemisupConfig:
    method: str = "lmsi"             # lmsi: vote on the final answers | star: checked answers and rationalised
                                     # failures | rest-em: checked answers, retrained from the base each round |
                                     # semievol: nearest labeled examples in context, consistent or confident
                                     # answers | pairs: DPO on right vs wrong answers | memory: the answers the
                                     # vote keeps go to an in-context memory, no weight changes (semisup.demos
                                     # nearest memory examples before every later prompt) | labeled: SFT on the
                                     # labeled set alone (the baseline)
    labeled_file: str = ""           # the labeled set, JSON lines of skill, difficulty, prompt, answer; empty: the
                                     # labeled.jsonl beside the model (what zoo:chain was trained on), or for a
                                     # model without one the zoo's labeled set of the skills
    labeled_weight: float = 0.3      # share of the training mixture on the labeled set
    demos: int = 2                   # semievol: nearest labeled examples put before each unlabeled problem (and
                                     # before each labeled one, in a second copy the update trains on too);
                                     # memory: nearest memory examples put before every prompt
    beta: float = 0.1                # pairs: DPO temperature
    pairs_per_problem: int = 2       # pairs: (right, wrong) pairs formed per problem at most
    rpo_alpha: float = 0.0           # pairs: weight of the chosen answers' NLL per token beside DPO (RPO); 0: DPO alone
    learn: str = "completion"        # lmsi, star, rest-em, semievol: what the update learns of each kept answer:
                                     # completion (its scratchpad and answer) | answer (the final answer alone, as the
                                     # skill writes an answer with no reasoning; a kept answer the checker would not
                                     # read back alone is learned whole) | distill (semievol: the model's next-token
                                     # distributions with the demonstrations in context, the top 64 per token,
                                     # learned without them by KL). Recipe answer-only: star with answer;
                                     # recipe context-distill: semievol with distill
    temperatures: list[float] = field(default_factory=list)  # B-STaR: choose the sampling temperature among these
                                     # each round by the balance score on a slice of the dev split (empty: fixed)
    thresholds: list[float] = field(default_factory=list)    # B-STaR: ... and refine.vote_agreement among these
    balance_n: int = 4               # B-STaR: distinct right answers per problem that count as full exploration
    dev_slice: int = 100             # B-STaR: dev problems per skill the choice is made on


@dataclass
class ControllerConfig:
    arms: list[str] = field(default_factory=list)  # semisup: strategies a bandit chooses among each round, by
                                     # measured dev gain per unit of compute (evolvelm.controller): lmsi | star |
                                     # answer-only | rest-em | semievol | context-distill | pairs | memory; empty:
                                     # the recipe's own
    explore: float = 1.0             # UCB's exploration weight (x the largest gain per 1k sequences seen)
    policy: str = "stay"             # stay (the last arm again while its rounds gain on dev, promoted or not,
                                     # else ucb) | ucb | random (an arm drawn by the round's seed: the baseline);
                                     # modules.order controller: random, weakest (the lowest dev accuracy: a
                                     # baseline), or else ucb on expected gain
    first: str = "verified"          # arms not tried yet: verified (those whose kept answers the checker verifies,
                                     # star, answer-only, rest-em, pairs, before votes and consistency) | listed (as in arms)
    probe: str = "verified"          # policy stay: while the arm played gains, give one round to each arm of this
                                     # group not tried yet (verified | all | none), in the order of `first`; arms
                                     # outside the group wait until none tried gains
    same_start: bool = True          # with probe: a probe round trains the arm that gained and the probe from the
                                     # same model and goes on with the one that gains more on dev (the other's
                                     # round is kept under RUN_DIR/trials/); false: the probe plays the next round
                                     # alone, and plays on if the gate promotes it, else hands back
    settings: dict = field(default_factory=dict)  # per arm, settings on top of its strategy (sections acquire,
                                     # refine, update, semisup), e.g. {pairs: {update: {lr: 2.0e-4}}}: the arm as
                                     # its recipe would run with them (ARMS; pairs trains at lr 1e-4 without)


@dataclass
class JudgeConfig:
    model: str = "self"              # the `judge` filter's judge: self (each round's own model, audited again every
                                     # round) | first | random (baselines) | a model reference
    backend: str = "hf"              # a judge other than self: hf | openai (self answers on model.backend)
    base_url: str = ""               # backend openai: the judge's endpoint
    api_key_env: str = ""            # backend openai: the environment variable holding the judge's key
    method: str = "generate"         # generate: the verdict read from a greedy answer | logprobs: the likelier verdict
    mode: str = "score"              # score: keep answers the judge rates >= judge.threshold (1-5) | samples: keep
                                     # answers preferred to the problem's other answers in most pairwise judgements |
                                     # reference: keep answers preferred to the problem's reference answer (star,
                                     # rest-em, pairs: their problems come with answers)
    threshold: float = 4.0           # score: the lowest rating kept
    audit: str = ""                  # a judge other than self: the report of `evolvelm judge audit --out` it must pass
    data: str = "../shared/data/llmbar"  # self: the LLMBar folder each round's audit reads
    audit_limit: int = 0             # self: pairs per LLMBar subset in each round's audit (0 = all 419)
    min_accuracy: float = 0.6        # an audit passes with this accuracy on LLMBar's Adversarial subsets (chance: 0.5)
    min_agreement: float = 0.6       # ... and this share of pairs judged the same in both orders


@dataclass
class ClusterConfig:
    address: str = ""                # Ray fan-out of generation and scoring: "" (off: this process) | local (a Ray
                                     # cluster started on this machine) | a running cluster's address (host:6379)
    workers: int = 2                 # Ray workers, each holding a copy of the model (answers as model.batch_size batches)
    cpus: float = 1.0                # CPU cores per worker (its torch threads)
    gpus: float = 0.0                # GPUs per worker (fractions share one)


@dataclass
class Config:
    recipe: str = "ladder"           # loop family: evolvelm/recipes/<recipe>.py
    rounds: int = 4                  # self-improvement rounds after the round-0 evaluation
    seed: int = 0                    # seeds sampling, training and problem draws
    budget_minutes: float = 0.0      # start no new round after this much run time (0 = no limit)
    skills: list = field(default_factory=lambda: ["copy", "reverse"])  # skills to improve: built-in task names, or
                                     # mappings that define a skill by a dataset (they move to `data`)
    data: dict = field(default_factory=dict)  # skills defined by data, by name: data, prompt, answer, checker,
                                     # difficulty, splits, max_new_tokens (evolvelm.tasks.data)
    model: ModelConfig = field(default_factory=ModelConfig)
    acquire: AcquireConfig = field(default_factory=AcquireConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    update: UpdateConfig = field(default_factory=UpdateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    modules: ModulesConfig = field(default_factory=ModulesConfig)  # recipe modular: skills is the sequence
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)  # recipe knowledge: rounds = injections,
                                     # skills = the other skills that must not be lost
    semisup: SemisupConfig = field(default_factory=SemisupConfig)  # recipe semisup
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # the `judge` filter (recipe semisup) and its audit
    cluster: ClusterConfig = field(default_factory=ClusterConfig)  # Ray workers for acquisition, evaluation, scoring
    controller: ControllerConfig = field(default_factory=ControllerConfig)  # semisup: a bandit chooses each round's strategy


CHOICES = {"model.backend": sorted(BACKENDS), "model.dtype": ["auto", "float32", "bfloat16", "float16"],
           "model.chat": ["auto", "on", "off"], "update.method": ["full", "lora"], "recipe": ["ladder", "modular", "knowledge", "semisup"],
           "semisup.method": ["lmsi", "star", "rest-em", "semievol", "pairs", "memory", "labeled"],
           "semisup.learn": ["completion", "answer", "distill"],
           "knowledge.method": ["distill", "sft-qa", "sft-doc", "icl", "retrieval"],
           "modules.method": ["modular", "shared", "replay", "full"], "modules.router": ["hidden", "chars"],
           "modules.order": ["sequence", "controller"],
           "acquire.schedule": ["fixed", "adaptive"], "judge.backend": ["hf", "openai"],
           "judge.method": ["generate", "logprobs"], "judge.mode": ["score", "samples", "reference"]}


def overridden(cfg: Config, data: dict) -> Config:
    """A copy of `cfg` with the nested settings in `data` applied (and checked) on top."""
    out = copy.deepcopy(cfg)
    _apply(out, copy.deepcopy(data))
    return out


def _check_type(key: str, value, typ):
    """Return `value` as `typ`, or raise ConfigError naming `key`."""
    if typing.get_origin(typ) is list:
        (inner,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list of {inner.__name__}, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, inner) for i, v in enumerate(value)]
    ok = isinstance(value, typ) and not (typ is int and isinstance(value, bool))
    if typ is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-3 (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if not ok:
        raise ConfigError(f"{key}: expected {typ.__name__}, got {value!r}")
    return value


def _apply(obj, data: dict, prefix: str = "") -> None:
    """Set fields of dataclass `obj` from nested dict `data`, strictly."""
    hints = typing.get_type_hints(type(obj))
    valid = [f.name for f in dataclasses.fields(obj)]
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in valid:
            raise ConfigError(f"unknown config key {name!r}; valid keys{' in ' + prefix[:-1] if prefix else ''}: {valid}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{name}: expected a mapping with keys {[f.name for f in dataclasses.fields(typ)]}")
            _apply(getattr(obj, key), value, f"{name}.")
        elif typ is dict and isinstance(value, dict):  # a mapping setting: merged, so an override adds to a recipe's
            setattr(obj, key, _merged(getattr(obj, key), value))
        else:
            value = _check_type(name, value, typ)
            if name in CHOICES and value not in CHOICES[name]:
                raise ConfigError(f"{name}: {value!r} is not one of {CHOICES[name]}")
            setattr(obj, key, value)


def _merged(old: dict, new: dict) -> dict:
    """`old` with `new` on top, nested mappings merged key by key."""
    out = dict(old)
    for k, v in new.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(items: list[str]) -> dict:
    """["a.b=1", "c=x"] -> {"a": {"b": 1}, "c": "x"}; values parsed as YAML scalars/lists."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw) if raw else ""
    return out


def recipe_path(name_or_path: str) -> Path:
    """A shipped recipe name (e.g. copy-ladder) or a path to a YAML file."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        return p
    shipped = Path(__file__).parent / "recipes" / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise ConfigError(f"unknown recipe {name_or_path!r}; shipped recipes: {shipped_recipes()}")
    return shipped


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in (Path(__file__).parent / "recipes").glob("*.yaml"))


def load(source: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Build a Config from a recipe (name or YAML path) and dotted overrides."""
    cfg = Config()
    if source is not None:
        path = recipe_path(str(source))
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config sections")
        _apply(cfg, data)
    _apply(cfg, parse_overrides(list(overrides)))
    _skills_from_data(cfg)
    validate(cfg)
    return cfg


def _skills_from_data(cfg: Config) -> None:
    """A `skills` entry that is a mapping defines a skill by data: it moves to `data`, its name stays."""
    names = []
    for i, entry in enumerate(cfg.skills):
        if isinstance(entry, dict):
            if not isinstance(entry.get("name"), str):
                raise ConfigError(f"skills[{i}]: a skill defined by data needs a name (and data, prompt, answer, checker)")
            cfg.data[entry["name"]] = {k: v for k, v in entry.items() if k != "name"}
            entry = entry["name"]
        if not isinstance(entry, str):
            raise ConfigError(f"skills[{i}]: expected a task name or a mapping, got {entry!r}")
        names.append(entry)
    cfg.skills = names


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    from evolvelm.refine.filters import FILTERS
    from evolvelm.tasks import TASKS, data

    corpora = [n for n, entry in cfg.data.items() if isinstance(entry, dict) and entry.get("document")]
    if corpora and cfg.recipe != "knowledge":
        raise ConfigError(f"skills[{corpora[0]}].document: documents are what knowledge-distill injects; "
                          f"recipe {cfg.recipe!r} does not read them")
    if len(corpora) > 1:
        raise ConfigError(f"skills: knowledge-distill injects the documents of one skill; {corpora} all have a document field")
    for name, entry in cfg.data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"data.{name}: expected a mapping (data, prompt, answer, checker, ...), got {entry!r}")
        spec = data.DataSkill.parse({"name": name, **entry})
        if cfg.recipe == "ladder" and not spec.difficulty:
            raise ConfigError(f"skills[{name}]: the ladder climbs difficulties and this skill has none; name the field "
                              f"that holds each row's difficulty (difficulty: FIELD, an integer from 1)")
        data.register(spec, cfg.seed)
    for s in cfg.skills:
        if s not in TASKS:
            raise ConfigError(f"skills: unknown task {s!r}; valid tasks: {sorted(TASKS)} (or a mapping with data)")
    for f in cfg.refine.chain:
        if f not in FILTERS:
            raise ConfigError(f"refine.chain: unknown filter {f!r}; valid filters: {sorted(FILTERS)}")
    if cfg.controller.arms:
        from evolvelm.controller import ARMS

        unknown = [a for a in cfg.controller.arms if a not in ARMS]
        if unknown or cfg.recipe != "semisup" or len(set(cfg.controller.arms)) != len(cfg.controller.arms):
            raise ConfigError(f"controller.arms: distinct strategies for recipe semisup, among {sorted(ARMS)}; got "
                              f"{cfg.controller.arms} for recipe {cfg.recipe!r}")
        if cfg.semisup.temperatures or cfg.semisup.thresholds or "judge" in cfg.refine.chain:
            raise ConfigError("controller.arms: the controller chooses each round's strategy; B-STaR's choices "
                              "(semisup.temperatures, thresholds) and the judge filter are strategies of their own")
    _check_arm_settings(cfg)
    if cfg.controller.policy not in ("ucb", "stay", "random", "weakest"):
        raise ConfigError(f"controller.policy: ucb, stay or random (weakest: modules.order controller only), got "
                          f"{cfg.controller.policy!r}")
    if cfg.controller.policy == "weakest" and cfg.modules.order != "controller":
        raise ConfigError("controller.policy: weakest (the skill with the lowest dev accuracy) chooses modules; "
                          "it needs recipe modular with modules.order controller")
    if cfg.controller.first not in ("verified", "listed"):
        raise ConfigError(f"controller.first: verified or listed, got {cfg.controller.first!r}")
    if cfg.controller.probe not in ("none", "verified", "all"):
        raise ConfigError(f"controller.probe: none, verified or all, got {cfg.controller.probe!r}")
    if cfg.modules.order == "controller" and cfg.recipe != "modular":
        raise ConfigError(f"modules.order: the controller chooses the skill of each round of recipe modular; got recipe "
                          f"{cfg.recipe!r} (semisup chooses strategies: controller.arms)")
    if cfg.acquire.curriculum:
        band = cfg.acquire.curriculum
        if cfg.recipe != "semisup" or len(band) != 2 or not 0 <= band[0] < band[1] <= 1 or cfg.acquire.curriculum_pool < 2:
            raise ConfigError(f"acquire.curriculum: a band [lo, hi] of predicted success with 0 <= lo < hi <= 1, for recipe "
                              f"semisup, with acquire.curriculum_pool >= 2; got {band} for recipe {cfg.recipe!r}, "
                              f"curriculum_pool {cfg.acquire.curriculum_pool}")
    if cfg.refine.keep_as and (cfg.refine.keep_as not in FILTERS or cfg.refine.keep_as in ("confidence", "random")):
        raise ConfigError(f"refine.keep_as: a filter whose number kept confidence and random match; got "
                          f"{cfg.refine.keep_as!r}; valid: {sorted(set(FILTERS) - {'confidence', 'random'})}")
    if "verify" in cfg.refine.chain:
        blind = [s for s in cfg.skills if TASKS[s].judge is None]
        if blind:
            raise ConfigError(f"refine.chain: 'verify' executes answers, but {blind} are checked against true "
                              f"labels; skills it can verify: {sorted(s for s, t in TASKS.items() if t.judge)}")
    if "judge" in cfg.refine.chain:
        from evolvelm.judges import check_config

        check_config(cfg)
    if cfg.model.backend == "vllm" and _reads_weights(cfg):
        raise ConfigError(f"model.backend: recipe {cfg.recipe!r} reads the model's weights in this process (modules "
                          f"and router, distillation targets); it needs the hf backend")
    if not 0 < cfg.model.vllm_memory < 1:
        raise ConfigError(f"model.vllm_memory: must be in (0, 1), got {cfg.model.vllm_memory}")
    if cfg.model.backend == "openai":
        if not cfg.model.base_url:
            raise ConfigError("model.base_url: the openai backend needs the endpoint's URL, e.g. http://127.0.0.1:8000/v1")
        if cfg.recipe == "modular" and cfg.modules.method == "modular":
            raise ConfigError("model.backend: modular-skills answers through its router with every module loaded "
                              "at once; it needs the hf backend")
        if cfg.recipe in ("knowledge", "semisup") and _reads_weights(cfg):
            raise ConfigError("model.backend: context distillation reads the model's next-token distributions in "
                              "this process (its targets); it needs the hf backend")
    if cfg.cluster.address:
        _check_cluster(cfg)
    if cfg.sandbox.level not in ("auto", "subprocess", "bwrap"):
        raise ConfigError(f"sandbox.level: must be one of ['auto', 'subprocess', 'bwrap'], got {cfg.sandbox.level!r}")
    if cfg.model.device != "auto" and not (cfg.model.device == "cpu" or cfg.model.device.startswith(("cuda", "mps"))):
        raise ConfigError(f"model.device: must be auto, cpu, cuda, cuda:N or mps, got {cfg.model.device!r}")
    for key in ("rounds", "acquire.problems", "acquire.samples", "acquire.step", "update.steps",
                "eval.max_difficulty", "eval.problems", "eval.dev_problems", "model.batch_size", "update.batch_size",
                "update.lora_r", "update.lora_alpha", "sandbox.memory_mb", "sandbox.disk_mb", "model.concurrency"):
        if _value(cfg, key) < 1:
            raise ConfigError(f"{key}: must be >= 1, got {_value(cfg, key)}")
    for key in ("update.lr", "sandbox.wall_s", "eval.threshold"):
        if _value(cfg, key) <= 0:
            raise ConfigError(f"{key}: must be > 0, got {_value(cfg, key)}")
    for key in ("acquire.temperature", "update.warmup", "update.original", "acquire.start_level",
                "refine.max_per_problem", "budget_minutes", "sandbox.workers", "gate.tolerance"):
        if _value(cfg, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {_value(cfg, key)}")
    for key in ("refine.vote_agreement", "refine.min_agreement", "refine.min_diversity", "refine.nll_quantile",
                "refine.keep_share", "acquire.adaptive_agreement", "eval.threshold"):
        if not 0 <= _value(cfg, key) <= 1:
            raise ConfigError(f"{key}: must be in [0, 1], got {_value(cfg, key)}")
    if cfg.acquire.variants:
        without = [s for s in cfg.skills if TASKS[s].variant is None]
        if cfg.acquire.variants < 0 or without or cfg.recipe != "ladder":
            raise ConfigError(f"acquire.variants: equivalent prompts are asked by the ladder recipe, of skills "
                              f"{sorted(s for s, t in TASKS.items() if t.variant)}, and must be >= 0; got "
                              f"{cfg.acquire.variants} for recipe {cfg.recipe!r}" + (f" and skills {without}" if without else ""))
    if cfg.acquire.consolidate < 0:
        raise ConfigError(f"acquire.consolidate: must be >= 0, got {cfg.acquire.consolidate}")
    if not 0 <= cfg.refine.model_vote_min <= 1 + len(cfg.model.voters):
        raise ConfigError(f"refine.model_vote_min: must be between 0 and the {1 + len(cfg.model.voters)} models "
                          f"(the model and model.voters), got {cfg.refine.model_vote_min}")
    if cfg.recipe == "modular" and cfg.modules.order == "sequence" and cfg.rounds != len(cfg.skills):
        raise ConfigError(f"rounds: the modular recipe learns one entry of `skills` per round, so rounds must be "
                          f"{len(cfg.skills)} (the length of skills {cfg.skills}), got {cfg.rounds}")
    if cfg.knowledge.people < 1 or cfg.knowledge.documents < 1 or cfg.knowledge.anchors < 0:
        raise ConfigError("knowledge.people and knowledge.documents must be >= 1, knowledge.anchors >= 0")
    if not 2 <= cfg.knowledge.population <= 200:
        raise ConfigError(f"knowledge.population: must be in [2, 200] (a test and a dev half), got {cfg.knowledge.population}")
    if not 0 <= cfg.knowledge.anchor_weight < 1:
        raise ConfigError(f"knowledge.anchor_weight: must be in [0, 1), got {cfg.knowledge.anchor_weight}")
    if not 0 <= cfg.semisup.labeled_weight < 1:
        raise ConfigError(f"semisup.labeled_weight: must be in [0, 1), got {cfg.semisup.labeled_weight}")
    if cfg.gate.z < 0 or (cfg.gate.z and cfg.recipe != "semisup"):
        raise ConfigError(f"gate.z: the paired dev gate is the semisup recipe's and z must be >= 0; got {cfg.gate.z} "
                          f"for recipe {cfg.recipe!r}")
    if cfg.recipe == "semisup":
        _check_strategy(cfg, "")
    if not 0 < cfg.update.new_weight <= 1:
        raise ConfigError(f"update.new_weight: must be in (0, 1], got {cfg.update.new_weight}")
    if not 0 <= cfg.update.original_weight <= 1 - cfg.update.new_weight:
        raise ConfigError(f"update.original_weight: must be in [0, 1 - update.new_weight], got {cfg.update.original_weight}")


def _check_arm_settings(cfg: Config) -> None:
    """controller.settings: mappings of the sections an arm sets, for arms the controller plays, that
    leave each arm a valid run (pairs: a LoRA adapter)."""
    from evolvelm.controller import config_for

    sections = ["acquire", "refine", "update", "semisup"]
    for arm, settings in cfg.controller.settings.items():
        if arm not in cfg.controller.arms:
            raise ConfigError(f"controller.settings: {arm!r} is not one of controller.arms {cfg.controller.arms}")
        if not isinstance(settings, dict) or set(settings) - set(sections):
            raise ConfigError(f"controller.settings.{arm}: a mapping of the sections {sections}, got {settings!r}")
        try:
            played = config_for(cfg, arm)
        except ConfigError as e:
            raise ConfigError(f"controller.settings.{arm}: {e}") from e
        _check_strategy(played, f"controller.settings.{arm}: ")


def _check_strategy(cfg: Config, where: str) -> None:
    """semisup.method pairs trains a LoRA adapter: its DPO reference is the base with the adapter disabled.
    semisup.learn answer: the methods that fine-tune on kept answers; distill: semievol's, answered in context."""
    if cfg.semisup.method == "pairs" and cfg.update.method != "lora":
        raise ConfigError(f"{where}semisup.method=pairs trains a LoRA adapter against the base with the adapter "
                          f"disabled (the DPO reference): update.method must stay lora, got {cfg.update.method!r}")
    if cfg.semisup.learn == "distill" and cfg.semisup.method != "semievol":
        raise ConfigError(f"{where}semisup.learn=distill learns the model's distributions with the demonstrations "
                          f"semievol answered after, without them; semisup.method={cfg.semisup.method} answers with "
                          f"none in context: use semisup.method=semievol (or the recipe context-distill)")
    if cfg.semisup.learn == "answer" and cfg.semisup.method in ("pairs", "memory", "labeled"):
        raise ConfigError(f"{where}semisup.learn=answer is for the methods that fine-tune on kept answers (lmsi, star, "
                          f"rest-em, semievol); semisup.method={cfg.semisup.method} learns "
                          + {"pairs": "preferences", "memory": "nothing: it keeps answers in context",
                             "labeled": "the labeled set alone"}[cfg.semisup.method])


def _reads_weights(cfg: Config) -> bool:
    """Recipes that read the model's weights in this process, beyond generating and scoring."""
    if cfg.recipe == "semisup":  # context distillation's targets, in any strategy the run plays
        from evolvelm.controller import config_for

        return any(c.semisup.learn == "distill" for c in [config_for(cfg, a) for a in cfg.controller.arms] or [cfg])
    return cfg.recipe == "modular" or (cfg.recipe == "knowledge" and cfg.knowledge.method == "distill")


def _check_cluster(cfg: Config) -> None:
    """What a Ray fan-out needs: ray installed, a local backend, and a recipe that only generates and scores."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("cluster.address: Ray fan-out needs ray; pip install 'evolvelm[ray]'")
    if cfg.model.backend not in ("hf", "fake"):
        raise ConfigError(f"cluster.address: Ray workers run the hf or fake backend, not {cfg.model.backend!r} "
                          f"(an endpoint fans out by itself: model.concurrency)")
    if cfg.model.backend == "fake" and cfg.data:
        raise ConfigError("cluster.address: the fake backend answers skills from data only in the process that read them")
    if _reads_weights(cfg):
        raise ConfigError(f"cluster.address: recipe {cfg.recipe!r} reads the model's weights in this process "
                          f"(modules and router, distillation targets); run it without a cluster")
    if cfg.cluster.workers < 1 or cfg.cluster.cpus <= 0 or cfg.cluster.gpus < 0:
        raise ConfigError(f"cluster: workers must be >= 1, cpus > 0 and gpus >= 0; got {cfg.cluster.workers}, "
                          f"{cfg.cluster.cpus}, {cfg.cluster.gpus}")


def _value(cfg: Config, key: str):
    """The setting at a dotted key."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Config) -> str:
    """The resolved config as YAML, as saved next to every run."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
