"""Knowledge internalisation: the facts skill, the distillation loss, the retrieval memory, and the
knowledge recipe end to end on the shipped zoo:facts model (its kill-and-resume: test_models, on the chat model)."""
import json

import pytest
import torch
from test_resume import evolvelm

from evolvelm import config
from evolvelm.config import ConfigError
from evolvelm.prompts import PromptFormat
from evolvelm.recipes.knowledge import grounded
from evolvelm.store.memory import Memory
from evolvelm.store.run import Run
from evolvelm.tasks import ALPHABET, facts
from evolvelm.update import distill, sft
from evolvelm.zoo.tokenizer import char_tokenizer
from evolvelm.zoo.train import build

SMALL = ["rounds=2", "knowledge.people=4", "knowledge.documents=1", "knowledge.anchors=800", "update.steps=60",
         "eval.max_difficulty=2", "eval.problems=20", "eval.dev_problems=10"]


def test_documents_state_every_fact_and_questions_have_exact_answers():
    person = facts.Person("bora kemtal", "chess", "dulmar", "zentek", "law")
    doc = facts.document(person, seed=1)
    assert doc.startswith("bora kemtal: ") and all(v in doc for v in ("chess", "dulmar", "zentek", "law"))
    assert facts.document(person, seed=1) == doc
    asked, held = facts.questions(person, facts.ASK), facts.questions(person, facts.EVAL)
    assert len(asked) == 8 and len(held) == 4 and not {q.text for q in asked} & {q.text for q in held}
    q = [q for q in held if q.attribute == "city"][0]
    assert q.prompt == "Qhome city of bora kemtal?=" and q.answer == "dulmar"
    assert facts.in_context(doc, q) == doc + q.prompt
    assert facts.check(q, "dulmar") and not facts.check(q, "dulmar.")


def test_people_are_distinct_and_avoid_excluded_names():
    pop = facts.population()
    assert len({p.name for p in pop}) == facts.POPULATION_SIZE
    new = facts.people(50, "other", exclude=frozenset(p.name for p in pop))
    assert not {p.name for p in new} & {p.name for p in pop}
    chars = set(ALPHABET + facts.CHARS)
    assert all(set(facts.document(p, 0)) <= chars for p in new)


def test_soft_one_hot_targets_give_the_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 1], [-100, 2, 6, 0, 5]])
    hard = sft._loss(logits, labels, []) / 7  # the sum over the 7 answer tokens
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1))
    assert hard.item() == pytest.approx(expected.item(), rel=1e-5)
    one_hot = torch.nn.functional.one_hot(torch.tensor([4, 1]), 7).float()  # row 0's answer tokens 4, 1
    assert sft._loss(logits, labels, [(0, 3, one_hot)]).item() / 7 == pytest.approx(hard.item(), rel=1e-5)
    uniform = torch.full((2, 7), 1 / 7)  # a different target changes the loss
    assert sft._loss(logits, labels, [(0, 3, uniform)]).item() / 7 != pytest.approx(hard.item(), rel=1e-3)


def test_sparse_targets_give_the_kl_on_their_tokens():
    """A (probabilities, token ids) target is the KL over those tokens: the dense loss where they are the
    whole vocabulary, in any order; the top k renormalised where they are fewer."""
    torch.manual_seed(0)
    logits, labels = torch.randn(1, 5, 7), torch.tensor([[-100, -100, 3, 4, 1]])
    dense = torch.randn(3, 7).softmax(-1)
    order = torch.randperm(7).expand(3, 7)
    sparse = (dense.gather(-1, order), order)
    assert sft._loss(logits, labels, [(0, 2, sparse)]).item() == pytest.approx(sft._loss(logits, labels, [(0, 2, dense)]).item(), rel=1e-5)
    p, token = dense.topk(2, -1)
    p = p / p.sum(-1, keepdim=True)
    logp = logits[0, 1:4].log_softmax(-1).gather(-1, token)
    assert sft._loss(logits, labels, [(0, 2, (p, token))]).item() == pytest.approx((p * (p.log() - logp)).sum().item(), rel=1e-5)


def test_distillation_changes_the_parameters_and_lowers_the_kl():
    tok = char_tokenizer(ALPHABET + facts.CHARS)
    teacher, student = (build(dict(hidden=32, layers=2, heads=2, rope=True), tok) for _ in range(2))
    prompts, answers = ["Qwho is ab?=", "Qwho is cd?="], ["xy", "zw"]
    fmt = PromptFormat(tok)
    targets = distill.distributions(teacher, fmt, ["ctx." + p for p in prompts], answers)
    assert targets[0].shape == (3, len(tok)) and torch.allclose(targets[0].sum(-1), torch.ones(3))
    top, token = distill.distributions(teacher, fmt, ["ctx." + p for p in prompts], answers, top_k=4)[0]
    assert top.shape == token.shape == (3, 4) and torch.allclose(top.sum(-1), torch.ones(3))
    assert torch.equal(token, targets[0].topk(4, -1).indices)
    assert torch.allclose(top, targets[0].topk(4, -1).values / targets[0].topk(4, -1).values.sum(-1, keepdim=True))
    before = [p.detach().clone() for p in student.parameters()]
    losses = sft.train(student, fmt, distill.soft_examples(prompts, answers, targets), 80, 4, 3e-3, seed=0, quiet=True)
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))


def test_grounded_keeps_answers_found_as_whole_words():
    doc = "bora kemtal: lives in dulmar; works for zentek."
    assert grounded("dulmar", doc) and grounded("zentek", doc)
    assert not grounded("dulm", doc) and not grounded("kessa", doc) and not grounded("", doc)


def test_memory_retrieves_the_document_about_the_person_asked_for():
    docs = ["bora kemtal: lives in dulmar.", "sipu nodar: lives in kessa.", "bora tivek: lives in vorn."]
    memory = Memory(docs)
    assert memory.retrieve("where does sipu nodar live?") == docs[1]
    assert memory.retrieve("home city of bora tivek?") == docs[2]


def test_knowledge_config_is_checked():
    assert config.load("knowledge-distill").knowledge.method == "distill"
    with pytest.raises(ConfigError, match="knowledge.method"):
        config.load("knowledge-distill", ["knowledge.method=rag"])
    with pytest.raises(ConfigError, match="anchor_weight"):
        config.load("knowledge-distill", ["knowledge.anchor_weight=1.0"])


@pytest.fixture(scope="module")
def knowledge_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("knowledge") / "run"
    out = evolvelm("run", "knowledge-distill", *SMALL, "--run-dir", str(run_dir), timeout=600)
    assert out.returncode == 0, out.stderr
    return run_dir


def test_injection_rounds_store_documents_teacher_answers_and_verdicts(knowledge_run):
    run = Run.open(knowledge_run)
    acquire = run.done(2, "acquire")
    assert (acquire["people"], acquire["documents"], acquire["questions"]) == (4, 4, 32)
    assert (knowledge_run / "rounds/0002/acquire/targets.safetensors").is_file()
    rows = run.query("SELECT skill, context, true_answer, completion FROM samples WHERE round=2")
    docs = {r["completion"] for r in rows if r["skill"] == "document"}
    assert all(r["context"] in docs for r in rows if r["skill"] == "facts")  # each answer was read from a stored document
    verdicts = run.query("SELECT v.kept, s.completion, s.context FROM verdicts v JOIN samples s ON s.id = v.sample_id "
                         "WHERE v.round=2 AND v.filter='grounded'")
    assert len(verdicts) == 32 and all(bool(v["kept"]) == grounded(v["completion"], v["context"]) for v in verdicts)
    update = run.done(2, "update")
    assert update["anchors"] > 0 and update["loss_last"] < update["loss_first"]
    assert run.done(1, "gate")["promoted"] and update["replayed"] == run.done(1, "refine")["kept"] > 0


def test_knowledge_summary_measures_efficacy_retention_and_the_other_skills(knowledge_run):
    k = json.loads((knowledge_run / "summary.json").read_text())["knowledge"]
    assert [len(row) for row in k["matrix"]] == [1, 2]
    assert k["efficacy"][1] == k["matrix"][1][1] and k["retention"][1] == k["matrix"][1][0]
    assert all(u > 0.5 for u in k["upper"])  # zoo:facts reads documents
    assert set(k["other_base"]) == {"copy", "reverse", "population"}
    assert k["efficacy"][0] > 0.3  # the first batch was learned (a base model knows nothing of it)
    assert evolvelm("report", str(knowledge_run)).returncode == 0
    assert "Injected facts" in (knowledge_run / "report.html").read_text()


def test_in_context_and_retrieval_arms_do_not_train(tmp_path):
    for method in ("icl", "retrieval"):
        out = evolvelm("run", "knowledge-distill", *SMALL, f"knowledge.method={method}", "--run-dir",
                       str(tmp_path / method), timeout=600)
        assert out.returncode == 0, out.stderr
        run = Run.open(tmp_path / method)
        assert run.done(2, "update")["examples"] == 0 and run.done(2, "gate")["model"] == "zoo:facts"
        k = json.loads((tmp_path / method / "summary.json").read_text())["knowledge"]
        assert min(k["matrix"][1]) > 0.5  # the document (stored or given) is in context


def test_base_model_does_not_know_injected_people(tmp_path):
    out = evolvelm("run", "knowledge-distill", *SMALL, "rounds=1", "knowledge.method=sft-qa", "update.steps=1",
                   "update.lr=1e-9", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    k = json.loads((tmp_path / "run" / "summary.json").read_text())["knowledge"]
    assert k["efficacy"][0] < 0.15  # so what the trained arms answer, they learned
