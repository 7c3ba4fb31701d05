"""Learning from unlabeled data: the chain skill and its scratchpad checker, the semisup filters and
monitoring on literal samples, and the recipes end to end on the shipped zoo:chain model."""
import importlib.util
import json
import signal
from collections import Counter
from pathlib import Path

import pytest

from evolvelm import config
from evolvelm.backends.incontext import InContext
from evolvelm.config import ConfigError
from evolvelm.recipes import modular
from evolvelm.recipes.semisup import balance, held, labeled_set, monitor, training_mixture
from evolvelm.refine.filters import FilterContext, cap, consistency, vote
from evolvelm.report.export import last_state
from evolvelm.store.run import Run
from evolvelm.tasks import chain_steps, chain_valid, get_task, hint_prompt
from evolvelm.tasks.labeled import demonstrations, read_labeled
from evolvelm.types import Example, Problem, Sample
from evolvelm.zoo.train import SPECS, labeled_problems
from test_resume import evolvelm, outcome

SMALL = ["rounds=2", "acquire.problems=15", "acquire.samples=4", "update.steps=20", "eval.problems=20",
         "eval.dev_problems=10"]


def s(completion, k=0, prompt="M352=", truth="33,58,20|0"):
    return Sample(round=1, skill="chain", difficulty=2, prompt=prompt, completion=completion, model_version="v",
                  seed=k, k=k, temperature=1.0, mean_logprob=-0.1, true_answer=truth)


def test_chain_scratchpads_and_the_checker_of_the_final_answer():
    assert chain_steps("352", [0, 1, 2]) == "33,58,20|0" and chain_steps("352", [2, 0, 1]) == "22,35,50|0"
    task, p = get_task("chain"), Problem("chain", 2, "M352=", "33,58,20|0")
    assert task.check(p, "22,35,50|0") and task.check(p, "99,99,99|0")  # only the answer counts
    assert not task.check(p, "33,58,20|1") and not task.check(p, "33,58,20")
    assert chain_valid("M352=", "22,35,50|0") and not chain_valid("M352=", "99,99,99|0")
    assert not chain_valid("M352=", "33,58|8")  # a digit left out
    assert hint_prompt("M352=", "0") == "M352?0="
    import random
    for d in range(1, 5):
        prompt, answer = task.make(d, random.Random(d))
        assert len(prompt) == d + 3 and len(answer) == 3 * d + 4 and chain_valid(prompt, answer)


def test_an_answer_alone_is_written_as_the_skill_reads_it_back():
    from evolvelm.tasks import Task
    from evolvelm.tasks.checkers import get_checker

    chain = get_task("chain")
    assert chain.bare("33,58,20|0") == "|0" and chain.check(Problem("chain", 2, "M352=", "33,58,20|0"), "|0")
    assert chain.bare("33,58") is None and get_task("copy").bare("abc") == "abc"  # no answer; no scratchpad
    data = lambda checker: Task("s", None, None, None, final=get_checker(checker).extract)
    assert data("number").bare("So she has 1,234 left.") == "1234" and data("choice").bare("The answer is (B).") == "B"
    assert data("regex:#### (\\d+)").bare("3 + 4 = 7\n#### 7") is None  # "7" alone is no answer to that checker


def test_vote_counts_final_answers_across_different_rationales():
    group = [s("33,58,20|0", 0), s("22,35,50|0", 1), s("55,52,24|4", 2), s("33,58,20|0", 3)]
    verdicts = vote(group, FilterContext(samples_per_problem=4, vote_agreement=0.75))
    assert [v.kept for v in verdicts] == [True, True, False, True]  # 3 of 4 reach 0 by two routes
    verdicts = vote(group, FilterContext(samples_per_problem=4, vote_agreement=1.0))
    assert not any(v.kept for v in verdicts)


def test_cap_keeps_the_first_answers_of_each_problem():
    group = [s("a", 0), s("b", 1), s("c", 2), s("x", 0, prompt="M11=")]
    assert [v.kept for v in cap(group, FilterContext(4, 0.5, max_per_problem=2))] == [True, True, False, True]
    assert all(v.kept for v in cap(group, FilterContext(4, 0.5)))


def test_consistency_keeps_unanimous_problems_and_the_most_confident_of_the_rest():
    group = [s("33,58,20|0", 0), s("22,35,50|0", 1),  # unanimous (two rationales, one answer)
             s("11,12|2", 0, prompt="M11="), s("11,13|3", 1, prompt="M11="), s("11,14|4", 2, prompt="M11="),
             s("11,15|5", 3, prompt="M11=")]
    for x, lp in zip(group[2:], (-0.1, -0.5, -0.9, -1.3)):
        x.mean_logprob = lp
    kept = [v.kept for v in consistency(group, FilterContext(4, 0.5, nll_quantile=0.5))]
    assert kept == [True, True, True, True, False, False]
    assert [v.kept for v in consistency(group, FilterContext(4, 0.5, nll_quantile=0.0))][2:] == [False] * 4


def test_balance_score_rewards_distinct_right_answers_and_precision():
    group = [s("33,58,20|0", 0), s("22,35,50|0", 1), s("55,52,24|4", 2), s("11,12|2", 0, prompt="M11=", truth="11,12|2")]
    right = [True, True, False, True]
    assert balance(group, right, 2) == pytest.approx((1.0 * 2 / 3 + 0.5 * 1.0) / 2)
    group[2].kept = False  # dropping the wrong answer raises exploitation
    assert balance(group, right, 2) == pytest.approx((1.0 + 0.5) / 2)
    group.append(s("11,12|2", 1, prompt="M11=", truth="11,12|2"))
    right.append(True)  # one right answer kept twice counts once, as in the authors' code
    assert balance(group, right, 2) == pytest.approx((1.0 + 0.5) / 2)
    group.append(s("11,13|3", 2, prompt="M11=", truth="11,12|2"))
    right.append(False)  # a wrong answer kept beside it halves that problem's exploitation
    assert balance(group, right, 2) == pytest.approx((1.0 + 0.5 * 0.5) / 2)
    for x in group:
        x.kept = False
    assert balance(group, right, 2) == 0.0


def test_demonstrations_are_the_nearest_labeled_examples():
    labeled = [Problem("chain", 1, "M12=", "11,23|3"), Problem("chain", 1, "M34=", "33,47|7"),
               Problem("chain", 2, "M349=", "33,47,96|6")]
    assert demonstrations("M43=", labeled, 1) == "M34=33,47|7"
    assert demonstrations("M349=", labeled, 2) == "M34=33,47|7M12=11,23|3"  # never the problem itself


def test_monitor_measures_exploration_and_precision_by_margin():
    group = [s("33,58,20|0", 0), s("22,35,50|0", 1), s("55,52,24|4", 2), s("33,58,20|0", 3),
             s("11,12|2", 0, prompt="M11=", truth="11,12|2"), s("11,13|3", 1, prompt="M11=", truth="11,12|2"),
             s("11,13|3", 2, prompt="M11=", truth="11,12|2"), s("11,13|3", 3, prompt="M11=", truth="11,12|2")]
    right = [get_task("chain").check(Problem("chain", 2, x.prompt, x.true_answer), x.completion) for x in group]
    m = monitor(group, right, 4)
    assert m["pass@1"] == pytest.approx(4 / 8) and m["pass@4"] == 1.0
    assert m["distinct_right"] == pytest.approx((2 + 1) / 2)  # two right rationales, then one
    assert m["precision_by_margin"] == {3: {"problems": 2, "precision": 0.5}}  # 3 votes: one right, one wrong


def test_labeled_set_ships_with_the_model_and_is_never_held_out():
    cfg = config.load("lmsi")
    problems = labeled_set(cfg, Run("."))
    # 100 per difficulty, but one operation has only 100 distinct problems and half of them are held out
    assert [sum(p.difficulty == d for p in problems) for d in (1, 2, 3, 4)] == [50, 100, 100, 100]
    h = held(cfg, Run("."))["chain"]  # the splits are drawn around the labeled problems
    assert not any(p.prompt in h[p.difficulty] for p in problems)
    assert [len(h[d]) for d in (1, 2, 3, 4)] == [50, 500, 2000, 2000]  # test + dev: each up to 1000, a quarter of the distinct prompts at most
    assert all(get_task("chain").check(p, p.answer) and chain_valid(p.prompt, p.answer) for p in problems)
    assert problems == labeled_problems(SPECS["chain"])  # `python -m evolvelm.zoo.train --model chain` draws it again


def test_semisup_config_and_labeled_file_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="semisup.method"):
        config.load("lmsi", ["semisup.method=magic"])
    with pytest.raises(ConfigError, match="semisup.learn=answer is for .* semisup.method=memory learns nothing"):
        config.load("memory", ["semisup.learn=answer"])
    with pytest.raises(ConfigError, match="semisup.learn=distill .* semisup.method=star answers with none in context"):
        config.load("star", ["semisup.learn=distill"])
    with pytest.raises(ConfigError, match="distillation .* needs the hf backend"):
        config.load("lmsi", ["controller.arms=[star,context-distill]", "model.backend=openai", "model.base_url=http://x/v1"])
    with pytest.raises(ConfigError, match="labeled_weight"):
        config.load("lmsi", ["semisup.labeled_weight=1.5"])
    bad = tmp_path / "labels.jsonl"
    bad.write_text('{"skill": "chain", "difficulty": 1, "prompt": "M12=", "answer": "11,23|3"}\n{"skill": "chain"}\n')
    out = evolvelm("run", "lmsi", f"semisup.labeled_file={bad}", "--run-dir", str(tmp_path / "run"))
    assert out.returncode == 2 and f"{bad}:2" in out.stderr and "prompt" in out.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def lmsi_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lmsi") / "run"
    out = evolvelm("run", "lmsi", *SMALL, "--run-dir", str(run_dir), timeout=600)
    assert out.returncode == 0, out.stderr
    return run_dir


def test_lmsi_rounds_vote_train_and_monitor(lmsi_run):
    run = Run.open(lmsi_run)
    assert run.done(1, "acquire")["acquired"] == 4 * 15 * 4  # 4 difficulties x 15 problems x 4 samples
    verdicts = {r["filter"] for r in run.query("SELECT DISTINCT filter FROM verdicts WHERE round=1")}
    assert verdicts == {"vote", "dedup"}
    refine = run.done(1, "refine")
    assert 0 < refine["kept"] < 240 and refine["label_precision"] > 0.5  # the base is partly competent
    assert set(refine["monitor"]) == {"pass@1", "pass@4", "distinct_right", "diversity", "precision_by_margin"}
    examples, new = training_mixture(run.config(), run, 1)
    assert new == refine["kept"] and len(examples) == 350 + new
    assert sum(x.weight for x in examples) == pytest.approx(1.0)
    s = json.loads((lmsi_run / "summary.json").read_text())
    assert len(s["semisup"]["accuracy"]) == 3 and s["semisup"]["base"] > 0.3
    test = run.query("SELECT accuracy, n FROM evals WHERE round=0 AND split='test'")  # pooled over problems
    assert s["semisup"]["base"] == round(sum(r["accuracy"] * r["n"] for r in test) / sum(r["n"] for r in test), 4)
    marks = run.done(0, "eval")["dev_right"]["chain"]
    assert [len(marks[str(d)]) for d in range(1, 5)] == [10, 10, 10, 10]
    assert all("dev problems:" in r["reason"] for r in s["rounds"][1:])
    assert evolvelm("report", str(lmsi_run)).returncode == 0
    assert "Learning from unlabeled data" in (lmsi_run / "report.html").read_text()


def test_star_rationalises_failures_with_the_answer_as_hint(tmp_path):
    out = evolvelm("run", "star", *SMALL, "rounds=1", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    hinted = run.query("SELECT prompt, context, true_answer, k FROM samples WHERE round=1 AND context != ''")
    assert len(hinted) == run.done(1, "acquire")["rationalised"] > 0
    assert all(h["context"] == hint_prompt(h["prompt"], h["true_answer"][-1]) and h["k"] >= 4 for h in hinted)
    kept = [x for x in run.samples(1) if x.kept]
    assert kept and all(x.completion[-1] == x.true_answer[-1] for x in kept)  # the checker kept them


def test_answer_only_learns_the_final_answers_and_each_round_is_replayed_as_it_learned(tmp_path):
    """A controlled run: round 1 answer-only (the kept scratchpads learned as bare answers), round 2 star
    (its own whole, round 1's still bare)."""
    out = evolvelm("run", "star", *SMALL, "controller.arms=[answer-only,star]", "controller.policy=ucb",
                   "controller.first=listed", "gate.z=0", "gate.tolerance=1.0", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run, cfg = Run.open(tmp_path / "run"), config.load("star", [])
    assert [run.done(r, "acquire")["controller"]["arm"] for r in (1, 2)] == ["answer-only", "star"]
    assert (run.done(1, "update")["learn"], run.done(1, "update")["learned_whole"], run.done(2, "update")["learn"]) == ("answer", 0, "completion")
    kept = {r: [x for x in run.samples(r) if x.kept] for r in (1, 2)}
    assert kept[1] and kept[2] and any("," in x.completion for x in kept[1])
    examples, new = training_mixture(cfg, run, 2)
    assert [(x.prompt, x.answer) for x in examples] == (
        [(p.prompt, p.answer) for p in labeled_set(cfg, run)] + [(x.prompt, x.completion) for x in kept[2]]
        + [(x.prompt, "|" + x.completion.rpartition("|")[2]) for x in kept[1]])
    assert new == len(kept[2])
    assert evolvelm("report", str(tmp_path / "run")).returncode == 0
    assert f"{len(kept[1])} (learned as their final answers alone)" in (tmp_path / "run" / "report.html").read_text()


def test_context_distillation_learns_the_teachers_distributions_and_replays_them(tmp_path):
    """A controlled run: round 1 context-distill (each kept answer with the next-token distributions of
    the model that answered, reading its demonstrations), round 2 semievol (its own answers as tokens,
    round 1's with the targets round 1 stored)."""
    import torch

    from evolvelm.models import backend_for, base_state
    from evolvelm.update import distill

    out = evolvelm("run", "semievol", *SMALL, "controller.arms=[context-distill,semievol]", "controller.policy=ucb",
                   "controller.first=listed", "gate.z=0", "gate.tolerance=1.0", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run, cfg = Run.open(tmp_path / "run"), config.load("semievol", [])
    assert [run.done(r, "acquire")["controller"]["arm"] for r in (1, 2)] == ["context-distill", "semievol"]
    kept = {r: [x for x in run.samples(r) if x.kept] for r in (1, 2)}
    assert kept[1] and kept[2] and run.done(1, "update")["distilled"] == len(kept[1]) and "distilled" not in run.done(2, "update")
    assert not (run.stage_dir(2, "update") / "targets.safetensors").exists()
    stored = distill.load_sparse(run.stage_dir(1, "update") / "targets.safetensors")
    teacher = backend_for(cfg, run, base_state(cfg))  # round 1 started from the base
    again = distill.distributions(teacher.model, teacher.format, [x.context for x in kept[1]], [x.completion for x in kept[1]],
                                  top_k=distill.TOP_K)
    teacher.close()
    for x, (p, token) in zip(kept[1], again):
        assert x.context.endswith(x.prompt) and x.context != x.prompt
        assert torch.equal(stored[x.id][1], token) and torch.allclose(stored[x.id][0], p, atol=1e-5)
    examples, new = training_mixture(cfg, run, 2)
    labeled = labeled_set(cfg, run)
    assert new == len(kept[2]) and len(examples) == 2 * len(labeled) + new + len(kept[1])
    assert [(x.prompt, x.answer, x.target) for x in examples[2 * len(labeled):-len(kept[1])]] == [
        (x.prompt, x.completion, None) for x in kept[2]]
    replayed = examples[-len(kept[1]):]
    assert [(x.prompt, x.answer) for x in replayed] == [(x.prompt, x.completion) for x in kept[1]]
    assert all(torch.equal(x.target[1], stored[k.id][1]) for x, k in zip(replayed, kept[1]))
    assert evolvelm("report", str(tmp_path / "run")).returncode == 0
    assert f"{len(kept[1])} (learned by context distillation)" in (tmp_path / "run" / "report.html").read_text()


def test_rest_em_and_the_labeled_baseline_train_from_where_they_should(tmp_path):
    out = evolvelm("run", "rest-em", *SMALL, "--run-dir", str(tmp_path / "rest"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "rest")
    assert run.done(2, "update")["from"] == 0  # every iteration from the base
    kept = Counter(x.prompt for x in run.samples(2) if x.kept)
    assert kept and max(kept.values()) <= 4
    out = evolvelm("run", "lmsi", *SMALL, "rounds=1", "semisup.method=labeled", "--run-dir", str(tmp_path / "lab"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "lab")
    assert run.done(1, "update")["new_examples"] == 0 and run.done(1, "update")["examples"] == 350
    # training on the labeled set alone is this baseline's way, not a round that kept nothing
    assert not json.loads((run.root / "summary.json").read_text())["rounds"][1]["labeled_only"]


def test_a_round_that_keeps_nothing_trains_on_the_labeled_set_and_says_so(tmp_path):
    out = evolvelm("run", "lmsi", *SMALL, "rounds=1", "refine.chain=[random]", "refine.keep_share=0",
                   "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    assert run.done(1, "refine")["kept"] == 0 and run.done(1, "update")["examples"] == 350
    assert json.loads((run.root / "summary.json").read_text())["rounds"][1]["labeled_only"]
    assert evolvelm("report", str(tmp_path / "run")).returncode == 0
    assert "0 (trained on the labeled set alone)" in (tmp_path / "run" / "report.html").read_text()


def test_semievol_answers_after_demonstrations_and_keeps_by_consistency(tmp_path):
    out = evolvelm("run", "semievol", *SMALL, "rounds=1", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    rows = run.query("SELECT prompt, context FROM samples WHERE round=1")
    assert rows and all(r["context"].endswith(r["prompt"]) and len(r["context"]) > len(r["prompt"]) for r in rows)
    assert {r["filter"] for r in run.query("SELECT DISTINCT filter FROM verdicts WHERE round=1")} == {"consistency", "dedup"}
    examples, new = training_mixture(run.config(), run, 1)  # the labeled set plain and after its demonstrations
    labeled = labeled_set(run.config(), run)
    shown = [x.prompt for x in examples[:2 * len(labeled)]]
    assert new == run.done(1, "refine")["kept"] and len(examples) == 2 * len(labeled) + new
    assert shown == [p.prompt for p in labeled] + [demonstrations(p.prompt, labeled, 2) + p.prompt for p in labeled]


def test_memory_changes_no_weight_and_answers_after_the_answers_it_kept(tmp_path):
    out = evolvelm("run", "memory", *SMALL, "gate.z=0", "gate.tolerance=1.0", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    update, gate = run.done(1, "update"), run.done(1, "gate")
    assert update["examples"] == 0 and update["adapter"] is None and gate["model"] == run.done(0, "gate")["model"]
    assert gate["promoted"] and gate["memory"] == update["memory"] == "rounds/0001/update/memory"
    kept = {s.prompt: s.completion for s in reversed(run.samples(1)) if s.kept}
    memory = read_labeled(run.root / update["memory"] / "memory.jsonl")
    labeled = labeled_set(run.config(), run)
    assert kept and memory == labeled + [Problem("chain", p.difficulty, p.prompt, kept[p.prompt]) for p in memory[len(labeled):]]
    assert {p.prompt for p in memory[len(labeled):]} == set(kept)
    second = run.samples(2)  # round 2 answers after the nearest examples of the labeled set and round 1's kept answers
    assert second and all(demonstrations(s.prompt, memory, 2) + s.prompt in s.rendered for s in second)
    assert any(p in s.rendered for s in second for p in kept)  # the kept answers are read, not only the labeled set
    assert len(read_labeled(run.root / run.done(2, "update")["memory"] / "memory.jsonl")) > len(memory)  # round 2's answers join it
    base, first = (run.query("SELECT model_version FROM evals WHERE round=? LIMIT 1", (r,))[0]["model_version"] for r in (0, 1))
    assert first.startswith(base + "+memory:")  # the same weights, read with a memory
    cfg, last = run.config(), last_state(run)  # what `evolvelm generate` answers with reads the memory too
    assert isinstance(modular.model_for(cfg, run, last), InContext) and evolvelm("generate", str(tmp_path / "run"), "M352=").returncode == 0
    exported = evolvelm("export", str(tmp_path / "run"), str(tmp_path / "out"))
    assert exported.returncode == 0 and (tmp_path / "out" / "memory.jsonl").read_text() == \
        (run.root / run.done(2, "gate")["memory"] / "memory.jsonl").read_text()
    served = evolvelm("serve", str(tmp_path / "run"))
    assert served.returncode == 2 and "in-context memory" in served.stderr


def test_pairs_trains_an_adapter_with_dpo(tmp_path):
    out = evolvelm("run", "pairs", *SMALL, "rounds=1", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    update = run.done(1, "update")
    assert update["pairs"] > 0 and update["adapter"] and update["model"] == "zoo:chain"
    assert update["loss_first"] > 0.6931  # log 2 (the policy starts as the reference) + RPO's NLL term
    assert update["loss_last"] < update["loss_first"]
    with pytest.raises(ConfigError, match="lora"):
        config.load("pairs", ["update.method=full"])


def test_dpo_loss_starts_at_log_2_plus_rpo_times_the_chosen_nll():
    import torch

    from evolvelm.models import ZOO
    from evolvelm.prompts import PromptFormat
    from evolvelm.update import dpo, sft

    base = str(ZOO / "chain")
    tok = PromptFormat.load(base)
    pair = ("M352=", "33,58,20|0", "33,58,21|1")  # one pair: every batch holds it only
    x, y, mask = sft.batch(tok.pad_id, *sft.encode(tok, [Example(pair[0], pair[1])]))
    with torch.no_grad():
        logp, tokens = dpo.logps(sft.load_for_training(base, None, "full", 8, 16), x, y, mask)
    nll = -(logp / tokens).item()
    for alpha in (0.0, 2.0):  # a fresh LoRA adapter: the policy is the reference, so the DPO term is log 2
        model = sft.load_for_training(base, None, "lora", 8, 16, seed=0)
        losses = dpo.train(model, tok, [pair], 1, 2, 1e-4, 0.1, seed=0, warmup=0, quiet=True, rpo_alpha=alpha)
        assert losses[0] == pytest.approx(0.6931 + alpha * nll, abs=1e-3)


def test_bstar_chooses_temperature_and_agreement_by_balance(tmp_path):
    out = evolvelm("run", "bstar", *SMALL, "rounds=1", "semisup.temperatures=[0.5,1.5]", "semisup.thresholds=[0.5,1.0]",
                   "semisup.dev_slice=20", "--run-dir", str(tmp_path / "run"), timeout=600)
    assert out.returncode == 0, out.stderr
    run = Run.open(tmp_path / "run")
    acquire = run.done(1, "acquire")
    assert len(acquire["balance"]) == 4
    best = max(acquire["balance"].values())
    assert acquire["balance"][f"T={acquire['temperature']} agreement={acquire['vote_agreement']}"] == best
    assert run.done(1, "refine")["vote_agreement"] == acquire["vote_agreement"]
    assert {r["temperature"] for r in run.query("SELECT DISTINCT temperature FROM samples WHERE round=1")} == {acquire["temperature"]}


def test_kill_during_update_then_resume_matches(lmsi_run, tmp_path):
    run_dir = tmp_path / "run"
    killed = evolvelm("run", "lmsi", *SMALL, "--run-dir", str(run_dir),
                      env={"EVOLVELM_KILL_AT": "2:update:before-manifest"}, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    resumed = evolvelm("resume", str(run_dir), timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert outcome(run_dir) == outcome(lmsi_run)


def test_benchmark_merges_seeds_and_pairs_arms(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_semisup", Path(__file__).parent.parent / "benchmarks" / "semisup.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    run = lambda final: {"final": final, "base": 0.8, "rounds": []}
    out = lambda seeds, overrides=(): {"rounds": 5, "overrides": list(overrides), "arms": {
        "a": {"seeds": {str(k): run(v) for k, v in seeds["a"].items()}},
        "b": {"seeds": {str(k): run(v) for k, v in seeds["b"].items()}}}}
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    one.write_text(json.dumps(out({"a": {0: 0.90, 1: 0.92}, "b": {0: 0.91, 1: 0.92}})))
    two.write_text(json.dumps(out({"a": {2: 0.95}, "b": {2: 0.93}})))
    merged = bench.load([one, two])
    assert merged["a"]["finals"] == [0.90, 0.92, 0.95] and merged["a"]["final"] == pytest.approx(0.9233, abs=1e-4)
    p = bench.paired(merged["a"], merged["b"])  # differences -0.01, 0, +0.02
    assert (p["seeds"], p["higher"], p["equal"], p["lower"]) == (3, 1, 1, 1)
    assert p["mean"] == pytest.approx(0.0033, abs=1e-4) and p["se"] == pytest.approx(0.0088, abs=1e-4)
    assert bench.paired(bench.load([two])["a"], bench.load([two])["b"]) is None  # one seed: no spread
    with pytest.raises(SystemExit, match="already in"):
        bench.load([one, one])
    two.write_text(json.dumps(out({"a": {2: 0.95}, "b": {2: 0.93}}, ["acquire.problems=100"])))
    with pytest.raises(SystemExit, match="like with like"):
        bench.load([one, two])
