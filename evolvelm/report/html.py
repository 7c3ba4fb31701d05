"""A self-contained HTML report of a run, built from the run directory alone (summary + store)."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from evolvelm.store.run import Run
from evolvelm.store.summary import summarize


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def plots(summary: dict) -> list[tuple[str, str]]:
    """(title, <img>) for: accuracy by difficulty per round, frontier per round (ladders) or the
    forgetting matrix (modular), filter verdicts per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds, skills, out = summary["rounds"], list(dict.fromkeys(summary["skills"])), []
    fig, axes = plt.subplots(1, len(skills), figsize=(5.5 * len(skills), 3.6), squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, skill in zip(axes[0], skills):
        for i, r in enumerate(rounds):
            acc = r["accuracy"].get(skill, {})
            ds = sorted(acc, key=int)
            ax.plot([int(d) for d in ds], [acc[d] for d in ds], marker=".", color=cmap(i / max(1, len(rounds) - 1)),
                    linestyle="-" if r["promoted"] else ":", label=f"round {r['round']}" + ("" if r["promoted"] else " (rolled back)"))
        if skill in rounds[0]["levels"]:  # ladders: where the base model's training ended
            ax.axvline(rounds[0]["levels"][skill] + 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set(title=f"{skill}: held-out accuracy", xlabel="difficulty (dashed: end of base training range)",
               ylabel="accuracy", ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    out.append(("Accuracy by difficulty, per round", _png(fig)))
    plt.close(fig)

    if "knowledge" in summary:
        out += _knowledge_plots(summary["knowledge"], plt)
    elif "semisup" in summary:
        out += _semisup_plots(summary, plt)
    elif "forgetting" not in summary:  # ladders
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for skill in skills:
            ax.plot([r["round"] for r in rounds], [r["frontier"][skill] for r in rounds], marker="o", label=skill)
        ax.set(title="Frontier per round (all difficulties <= f solved at >= threshold)", xlabel="round", ylabel="frontier")
        ax.legend()
        out.append(("Frontier per round", _png(fig)))
        plt.close(fig)

    if "forgetting" in summary:
        f = summary["forgetting"]
        fig, ax = plt.subplots(figsize=(1.4 * len(f["skills"]) + 2, 0.5 * len(f["matrix"]) + 1.2))
        ax.imshow(f["matrix"], cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
        for i, row in enumerate(f["matrix"]):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(f["skills"])), f["skills"])
        learned = f.get("sequence", summary["skills"])  # the skill each round learned
        ax.set_yticks(range(len(f["matrix"])), ["base"] + [f"after {s}" for s in learned][:len(f["matrix"]) - 1])
        ax.set(title=f"Forgetting matrix: ACC {f['acc']}, BWT {f['bwt']}, FWT {f['fwt']}", xlabel="evaluated skill")
        out.append(("Accuracy on every skill after every round", _png(fig)))
        plt.close(fig)

    calibrated = [r for r in rounds if r.get("calibration")]
    if calibrated:
        out.append(("Reliability of the test answers' confidence", _reliability([calibrated[0], calibrated[-1]], plt)))

    refined = [r for r in rounds if r["filters"]]
    if refined:
        names = list(refined[-1]["filters"])
        fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
        for ax, name in zip(axes[0], names):
            xs = [r["round"] for r in refined]
            kept = [r["filters"].get(name, {}).get("kept", 0) for r in refined]
            dropped = [r["filters"].get(name, {}).get("dropped", 0) for r in refined]
            ax.bar(xs, kept, label="kept", color="tab:green")
            ax.bar(xs, dropped, bottom=kept, label="dropped", color="tab:red")
            ax.set(title=f"filter: {name}", xlabel="round")
            ax.legend(fontsize=7)
        out.append(("Kept and dropped per filter", _png(fig)))
        plt.close(fig)
    return out


def _reliability(rounds: list[dict], plt) -> str:
    """Reliability diagrams (accuracy against mean confidence per bin) of the first and last
    evaluated rounds, one panel per skill; marker area by the bin's answers."""
    skills = list(rounds[-1]["calibration"])
    fig, axes = plt.subplots(1, len(skills), figsize=(4.2 * len(skills), 3.8), squeeze=False)
    for ax, skill in zip(axes[0], skills):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8)
        for r, marker in zip(rounds, "os"):
            c = r["calibration"].get(skill)
            if c and c["bins"]:
                ax.scatter([b[2] for b in c["bins"]], [b[3] for b in c["bins"]], s=[10 + 200 * b[1] / c["n"] for b in c["bins"]],
                           marker=marker, alpha=0.6, label=f"round {r['round']}: ECE {_fmt(c['ece'])}, AUROC {_fmt(c['auroc'])}")
        ax.set(title=f"{skill}: confidence = P(greedy answer)", xlabel="mean confidence of the bin", ylabel="accuracy",
               xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
        ax.legend(fontsize=7)
    img = _png(fig)
    plt.close(fig)
    return img


def _knowledge_plots(k: dict, plt) -> list[tuple[str, str]]:
    """Efficacy and retention per injection, and the accuracy matrix (batch x injection)."""
    out, xs = [], range(1, len(k["matrix"]) + 1)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot(xs, k["efficacy"], marker="o", label="efficacy (newest batch)")
    ax.plot(xs, k["retention"], marker="s", label="retention (batch 1)")
    ax.plot(xs, k["upper"], linestyle="--", color="grey", label="upper bound (document in context)")
    for s in k["other_base"]:
        ax.plot(xs, [o[s] for o in k["other"]], linestyle=":", label=f"other: {s}")
    ax.set(title="Injected facts, held-out question phrasing", xlabel="injection", ylabel="accuracy", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    out.append(("Efficacy and retention per injection", _png(fig)))
    plt.close(fig)
    n = len(k["matrix"])
    grid = [[(row[j] if j < len(row) and row[j] is not None else float("nan")) for j in range(n)] for row in k["matrix"]]
    fig, ax = plt.subplots(figsize=(0.45 * n + 2, 0.35 * n + 1.5))
    ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    if n <= 12:
        for i, row in enumerate(grid):
            for j, v in enumerate(row[:i + 1]):
                ax.text(j, i, "-" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax.set(title="Accuracy on batch j after injection i", xlabel="batch j", ylabel="after injection i")
    out.append(("Retention matrix", _png(fig)))
    plt.close(fig)
    return out


def _semisup_plots(summary: dict, plt) -> list[tuple[str, str]]:
    """Accuracy, exploration and label precision per round, and precision by vote margin (last round)."""
    rounds, out = summary["rounds"], []
    acquired = [r for r in rounds if r["monitor"]]
    xs = [r["round"] for r in acquired]
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    ax.plot([r["round"] for r in rounds], summary["semisup"]["accuracy"], marker="o", label="test accuracy (kept model)")
    keys = dict.fromkeys(k for r in acquired for k in r["monitor"] if k.startswith("pass@"))  # a controller's arms
    for key in [*keys, "diversity"]:                                                       # may sample k apart
        played = [r for r in acquired if key in r["monitor"]]
        ax.plot([r["round"] for r in played], [r["monitor"][key] for r in played], marker=".", linestyle="--", label=key)
    ax.plot(xs, [r["label_precision"] for r in acquired], marker="s", label="precision of kept labels")
    ax.set(title="Accuracy, exploration and precision per round", xlabel="round", ylim=(-0.02, 1.02))
    ax.legend(fontsize=7)
    out.append(("Accuracy, exploration (B-STaR) and label precision per round", _png(fig)))
    plt.close(fig)
    if acquired:
        margin = acquired[-1]["monitor"]["precision_by_margin"]
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.bar([int(m) for m in margin], [v["precision"] for v in margin.values()], color="tab:blue")
        ax.set(title=f"Round {acquired[-1]['round']}: precision of the majority answer by its votes",
               xlabel="samples that gave the majority answer", ylabel="precision", ylim=(0, 1.02))
        out.append(("Precision by vote margin", _png(fig)))
        plt.close(fig)
    return out


def _html_table(head: list[str], rows: list[list]) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + f"</tr>{cells}</table>"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _tables(summary: dict) -> str:
    """The rounds (with the gate's and the avalanche guard's decisions) and label precision per filter."""
    kept = lambda r: (f"{r['kept']} (trained on the labeled set alone)" if r.get("labeled_only") else
                      f"{r['kept']} (learned as their final answers alone)" if r.get("learn") == "answer" else
                      f"{r['kept']} (learned by context distillation)" if r.get("learn") == "distill" else r["kept"])
    rounds = [[r["round"], "yes" if r["promoted"] else "ROLLED BACK", r["frontier"], r["levels"], r.get("unanimity", {}),
               r["acquired"], kept(r), _fmt(r["label_precision"]), r["reason"], r.get("decision", "")]
              for r in summary["rounds"]]
    out = _html_table(["round", "promoted", "frontier", "trained level", "unanimous share per difficulty", "acquired",
                       "kept", "label precision", "gate", "next round"], rounds)
    if "forgetting" in summary:
        rows = [[r["round"], r.get("module") or "", "yes" if r["promoted"] else "ROLLED BACK", r["reason"],
                 ", ".join(f"{s} {a:.2f}" for s, a in (r.get("router") or {}).items())] for r in summary["rounds"]]
        out += ("<h2>Modules and routing</h2><p>The module each round updated, and the share of every skill's "
                "held-out test prompts that the router sends to that skill's module (skills not learned yet: to "
                "no module).</p>" + _html_table(["round", "module updated", "promoted", "gate", "routing accuracy"], rows))
    if "knowledge" in summary:
        k = summary["knowledge"]
        rows = [[i + 1, _fmt(k["efficacy"][i]), _fmt(k["upper"][i]), _fmt(k["efficacy_ratio"][i]), _fmt(k["retention"][i]),
                 _fmt(k["retention_ratio"][i]), ", ".join(f"{s} {a:.3f}" for s, a in k["other"][i].items())]
                for i in range(len(k["matrix"]))]
        out += ("<h2>Injected facts</h2><p>Accuracy on questions in a phrasing never trained on: on the newest batch "
                "(efficacy) and on the first (retention), against the base model with the document in context (upper "
                f"bound). Other skills of the base model: {html.escape(str(k['other_base']))}.</p>"
                + _html_table(["injection", "efficacy", "upper bound", "efficacy / upper", "retention of batch 1",
                               "retention / upper", "other skills"], rows))
    if "semisup" in summary:
        rows = [[r["round"], "yes" if r["promoted"] else "ROLLED BACK", _fmt(summary["semisup"]["accuracy"][i]),
                 _fmt(summary["semisup"]["candidate"][i])] + [_fmt((r["monitor"] or {}).get(k)) for k in ("pass@1", "diversity", "distinct_right")]
                + [_fmt(r["label_precision"]), _fmt(r["rationale_precision"])] for i, r in enumerate(summary["rounds"])]
        out += ("<h2>Learning from unlabeled data</h2><p>Mean test accuracy of the final answer; exploration of the "
                "round's samples (pass@1, share of distinct answers, distinct right rationales per problem); precision "
                "of the kept labels' final answers and of their whole scratchpads (true answers, benchmark only).</p>"
                + _html_table(["round", "promoted", "accuracy (kept)", "accuracy (candidate)", "pass@1", "diversity",
                               "distinct right / problem", "label precision", "rationale precision"], rows))
    chosen = [r for r in summary["rounds"] if r.get("controller")]
    if chosen:
        rows = [[r["round"], r["controller"]["arm"], "yes" if r["promoted"] else "ROLLED BACK", r["controller"]["reason"]]
                for r in chosen]
        if "forgetting" in summary:  # modular: modules.order controller
            out += ("<h2>Skill per round</h2><p>The controller's choice of the skill each round learns, and so of the "
                    "module that trains (<code>modules.order: controller</code>), by expected dev gain per 1,000 "
                    "sequences trained on, and why.</p>" + _html_table(["round", "skill", "promoted", "why"], rows))
        else:
            out += ("<h2>Strategy per round</h2><p>The controller's choice among <code>controller.arms</code>, by "
                    "measured dev gain per 1,000 sequences processed (win-stay over UCB1 by default), and why.</p>"
                    + _html_table(["round", "strategy", "promoted", "why"], rows))
    prediction = summary.get("semisup", {}).get("prediction")
    if prediction:
        names = {"controller": "controller", "self": "model", "self_change": "model's change",
                 "self_delta": "model, changed answers", "no_change": "no change",
                 "last_change": "same change as last round"}
        given = [k for k in names if any(r[k] is not None for r in prediction["rounds"])]
        rows = [[r["round"], _fmt(r["actual"])] + [_fmt(r[k]) for k in given] for r in prediction["rounds"]]
        rows.append(["mean abs. error", ""] + [_fmt(prediction["mae"][k]) for k in given])
        out += ("<h2>Predict-the-update</h2><p>Each round's candidate test accuracy (pooled), as predicted before "
                "its update by the controller, in a run with one (the starting model plus the share of its errors the "
                "chosen strategy fixed on average so far), by the updated model itself before its answers are checked (its "
                "confidence in each answer, recalibrated on the starting model's dev answers; its change: the "
                "starting model's accuracy plus the change between the two models' own estimates; its changed answers: the "
                "starting model's verdicts where the final answer stayed, wrong where a right one changed on a skill with one "
                "right answer, else the confidence recalibrated on the dev answers the last update changed, kept or rolled back), "
                "and by the naive predictors.</p>"
                + _html_table(["round", "actual"] + [names[k] for k in given], rows))
    calibrated = [(r["round"], skill, c) for r in summary["rounds"] for skill, c in (r.get("calibration") or {}).items()]
    if calibrated:
        rows = [[rnd, skill, c["n"], _fmt(c["accuracy"]), _fmt(c["confidence"]), _fmt(c["ece"]), _fmt(c["brier"]),
                 _fmt(c["auroc"]), _fmt(c["token_ece"]), _fmt(c["token_auroc"]), _fmt(c.get("recalibrated_ece")),
                 _fmt(c.get("recalibrated_auroc"))] for rnd, skill, c in calibrated]
        out += ("<h2>Calibration</h2><p>How well the model's confidence in its greedy test answers tracks whether "
                "they are right, per round's model: the probability of the whole answer (sequence) and the geometric "
                "mean of its tokens' probabilities (token); recipe semisup: the token confidence recalibrated on the "
                "same model's dev answers (histogram binning, fitted on dev, scored on test). ECE over 10 bins; "
                "Brier score; AUROC of right vs wrong answers (0.5: no better than chance).</p>"
                + _html_table(["round", "skill", "answers", "accuracy", "mean confidence", "ECE", "Brier", "AUROC",
                               "token ECE", "token AUROC", "recalibrated ECE", "recalibrated AUROC"], rows))
    audited = [r for r in summary["rounds"] if r.get("judge")]
    if audited:
        rows = [[r["round"], r["judge"]["name"], r["judge"]["version"], "yes" if r["judge"]["passed"] else "FAILED",
                 _fmt((r["judge"]["adversarial"] or {}).get("accuracy")), _fmt(r["judge"]["all"]["accuracy"]),
                 _fmt(r["judge"]["all"]["agreement"]), _fmt(r["judge"]["all"]["ties"])] for r in audited]
        out += ("<h2>Judge audits</h2><p>The judge of the <code>judge</code> filter on LLMBar, each pair in both orders "
                "(accuracy: single-order verdicts that pick the better output; agreement: pairs judged the same both "
                "ways). A round whose judge failed used none of its judgements.</p>"
                + _html_table(["round", "judge", "version", "passed", "adversarial accuracy", "accuracy", "agreement",
                               "ties"], rows))
    refined = [r for r in summary["rounds"] if r["filters"]]
    if refined:
        names = list(refined[-1]["filters"])
        rows = [[r["round"]] + [f"{f.get('kept', 0)} kept, {f.get('dropped', 0)} dropped, precision {_fmt(f.get('precision'))}"
                                for f in (r["filters"].get(n, {}) for n in names)] for r in refined]
        out += ("<h2>Label precision after each filter</h2><p>Share of the labels still kept after each filter of the "
                "chain that are correct (true labels, never seen by the unsupervised filters).</p>"
                + _html_table(["round"] + names, rows))
    return out


def _sandbox_line(summary: dict) -> str:
    """Which isolation executed the answers, and what the executor-feedback retries did."""
    box = summary.get("sandbox")
    if not box:
        return ""
    retried = sum(f["retried"] for r in summary["rounds"] for d in r.get("feedback", {}).values() for f in d.values())
    kept = sum(r.get("kept_retries", 0) for r in summary["rounds"])
    return (f" Answers were executed in the sandbox at level <b>{html.escape(box['level'])}</b>"
            + (f"; {retried} rejected answers were retried with the executor's feedback, {kept} retries kept." if retried else "."))


def write_report(run: Run, out: Path) -> Path:
    """Render report.html for `run` and return its path."""
    summary = summarize(run, run.config())
    figures = "".join(f"<h2>{html.escape(t)}</h2>{img}" for t, img in plots(summary))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>evolvelm report: {html.escape(run.root.name)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}img{{max-width:100%}}</style></head><body>
<h1>evolvelm run <code>{html.escape(str(run.root))}</code></h1>
<p>Skills: {html.escape(', '.join(summary['skills']))}. Final frontier: <b>{html.escape(str(summary['final_frontier']))}</b>
(base: {html.escape(str(summary['rounds'][0]['frontier']))}). Wall time: {summary['wall_seconds']:.0f}s.
Accuracy is greedy exact match on the held-out test split; label precision is measured against true labels
that the unsupervised filters never see.{_sandbox_line(summary)}</p>
{_tables(summary)}{figures}</body></html>"""
    out.write_text(page)
    return out
