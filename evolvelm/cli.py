"""The `evolvelm` command line: thin wrappers over recipes, the run directory and the report.

    evolvelm run copy-ladder [key=value ...] [--run-dir DIR]   start a run (overrides before or after options)
    evolvelm resume RUN_DIR                                    continue from the first uncommitted stage
    evolvelm validate RECIPE [key=value ...]                   check a recipe without loading weights
    evolvelm ls [RUNS_DIR]                                     shipped recipes and runs
    evolvelm report RUN_DIR                                    RUN_DIR/report.html
    evolvelm inspect RUN_DIR [SAMPLE_ID] [--round N] [--dropped]
    evolvelm export RUN_DIR OUT [--merged] [--module NAME]     the evolved model as a HF directory
    evolvelm generate RUN_DIR [PROMPT ...]                     answer prompts (or stdin lines) with it
    evolvelm serve RUN_DIR|MODEL [--host H] [--port N]         an OpenAI-compatible server over it
    evolvelm env                                               versions

Under `accelerate launch --num_processes N -m evolvelm run|resume ...` process 0 runs the recipe and
the others share its update stages (evolvelm.update.parallel).

Exit codes: 0 success, 1 unexpected failure, 2 bad input (config, files, run directory).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evolvelm import __version__, config
from evolvelm.backends.check import ServedWeightsError
from evolvelm.config import ConfigError
from evolvelm.store.run import Run
from evolvelm.tasks.checkers import CheckerError
from evolvelm.update import parallel


def _quiet_libraries() -> None:
    """Hide per-load weight progress bars of transformers; our own stages show progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _recipe(cfg: config.Config):
    """The module of a config's loop family (evolvelm/recipes/<recipe>.py)."""
    import importlib

    return importlib.import_module(f"evolvelm.recipes.{cfg.recipe}")


def _execute(run: Run, quiet: bool) -> int:
    cfg = run.config()
    if cfg.model.backend == "hf":
        _quiet_libraries()
    t0 = time.time()
    try:
        summary = _recipe(cfg).run_recipe(cfg, run, quiet=quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted; committed stages are kept. Continue with: evolvelm resume {run.root}", file=sys.stderr)
        return 130
    except CheckerError as e:
        path = run.record_checker_errors(e.failures)
        print(f"evolvelm: error: {e}\nthe round stopped with nothing of its stage scored; the completions are in {path}. "
              f"Fix the checker, then continue with: evolvelm resume {run.root}", file=sys.stderr)
        return 1
    except ServedWeightsError as e:
        print(f"evolvelm: error: {e}\nrun: {run.root}", file=sys.stderr)
        return 1
    finally:
        if "evolvelm.backends.cluster" in sys.modules:  # the run's Ray workers
            sys.modules["evolvelm.backends.cluster"].shutdown()
    first = summary["rounds"][0]
    promoted = sum(r["promoted"] for r in summary["rounds"][1:])
    print(f"run {run.root}: {len(summary['rounds']) - 1} rounds ({promoted} promoted) in {time.time() - t0:.0f}s")
    if "forgetting" in summary:
        f = summary["forgetting"]
        print(f"after the sequence {f['sequence']}: ACC {f['acc']}  BWT {f['bwt']}  FWT {f['fwt']}  "
              f"mean over {f['skills']} {f['mean']}")
    elif "knowledge" in summary:
        k = summary["knowledge"]
        print(f"{cfg.knowledge.method}: efficacy on the last batch {k['efficacy'][-1:]} of upper bound {k['upper'][-1:]};"
              f" retention of batch 1 {k['retention'][-1:]}; other skills {k['other'][-1:]} (base {k['other_base']})")
    elif "semisup" in summary:
        s = summary["semisup"]
        print(f"{cfg.semisup.method}: test accuracy (pooled) {s['base']} (base) -> {s['accuracy'][-1]}")
    else:
        print(f"frontier: base {first['frontier']} -> final {summary['final_frontier']}")
    print(f"summary: {run.root / 'summary.json'}   report: evolvelm report {run.root}")
    return 0


def _load(a) -> config.Config:
    """The recipe with overrides; relative model and data paths are taken relative to the current directory."""
    cfg = config.load(a.recipe, a.overrides)
    # a path that exists here is made absolute; anything else stays as written (zoo:NAME, a hub id)
    absolute = lambda ref: str(Path(ref).resolve()) if ref and not ref.startswith("zoo:") and Path(ref).exists() else ref
    cfg.model.path, cfg.model.voters = absolute(cfg.model.path), [absolute(v) for v in cfg.model.voters]
    cfg.semisup.labeled_file = absolute(cfg.semisup.labeled_file)
    for entry in cfg.data.values():
        entry["data"] = absolute(entry.get("data", ""))
    return cfg


def cmd_run(a) -> int:
    cfg = _load(a)
    parallel.check(cfg)
    name = Path(a.recipe).stem
    run_dir = Path(a.run_dir) if a.run_dir else Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _recipe(cfg).preflight(cfg, Run(run_dir))  # fail on a missing model before creating anything
    return _execute(Run.create(run_dir, cfg), a.quiet)


def cmd_resume(a) -> int:
    run = Run.open(Path(a.run_dir))
    parallel.check(run.config())
    return _execute(run, a.quiet)


def cmd_validate(a) -> int:
    cfg = _load(a)
    levels = _recipe(cfg).preflight(cfg, Run(Path(".")))
    print(f"ok: {a.recipe} ({cfg.rounds} rounds, skills {cfg.skills}" +
          (f", starting levels {levels})" if levels else ")"))
    return 0


def cmd_ls(a) -> int:
    print("shipped recipes: " + ", ".join(config.shipped_recipes()))
    root = Path(a.runs_dir)
    runs = sorted(p.parent for p in root.glob("*/config.yaml")) if root.is_dir() else []
    if runs:
        print(f"\n{'run':40s} {'rounds':>6s} {'promoted':>8s}  final frontier")
    for r in runs:
        s = json.loads((r / "summary.json").read_text()) if (r / "summary.json").is_file() else {"rounds": []}
        done = len(s["rounds"]) - 1 if s["rounds"] else 0
        promoted = sum(x["promoted"] for x in s["rounds"][1:])
        print(f"{str(r):40s} {done:6d} {promoted:8d}  {s.get('final_frontier', {})}")
    return 0


def cmd_report(a) -> int:
    from evolvelm.report.html import write_report

    run = Run.open(Path(a.run_dir))
    out = write_report(run, Path(a.out) if a.out else run.root / "report.html")
    print(f"wrote {out}")
    return 0


def cmd_inspect(a) -> int:
    from evolvelm.report.inspect import explain, list_dropped

    run = Run.open(Path(a.run_dir))
    if a.sample_id:
        print(explain(run, a.sample_id))
    else:
        print(list_dropped(run, a.round, a.limit) if a.dropped else explain(run, None, a.round))
    return 0


def cmd_export(a) -> int:
    from evolvelm.report.export import export

    _quiet_libraries()
    print(f"wrote {export(Run.open(Path(a.run_dir)), Path(a.out), a.merged, a.module)}")
    return 0


def cmd_generate(a) -> int:
    from evolvelm.report.export import answerer

    _quiet_libraries()
    prompts = a.prompts or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    model = answerer(Run.open(Path(a.run_dir)))
    for prompt, answer, module in model(prompts, a.max_new_tokens):
        print(f"{prompt}\t{answer}" + (f"\t[{module or 'base'}]" if module is not False else ""))
    return 0


def cmd_serve(a) -> int:
    import os

    try:
        import uvicorn

        from evolvelm.serve import open_served
        from evolvelm.serve.app import make_app
    except ImportError as e:
        raise ConfigError(f"serve needs FastAPI and uvicorn: pip install 'evolvelm[serve]' ({e})") from e
    key = None
    if a.api_key_env:
        key = os.environ.get(a.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {a.api_key_env}: that environment variable is not set or empty")
    _quiet_libraries()
    served = open_served(a.target, device=a.device)
    if a.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"warning: listening on {a.host} without an API key (--api-key-env VAR)", file=sys.stderr)
    print(f"serving {sorted(served.names)} on http://{a.host}:{a.port}/v1", file=sys.stderr)
    try:
        uvicorn.run(make_app(served, key, a.allow_loading, a.batch_rows), host=a.host, port=a.port, log_level="warning")
    finally:
        served.close()
    return 0


def cmd_judge(a) -> int:
    import json

    from evolvelm import judges

    _quiet_libraries()
    options = {"seed": a.seed} if a.model == "random" else {"device": a.device} if a.backend == "hf" else {
        "base_url": a.base_url, "api_key_env": a.api_key_env or ""}
    judge = judges.make_judge(a.model, a.method, a.backend, a.quiet, **options)
    try:
        report = judges.audit(judge, a.data, a.limit)
    finally:
        judge.close()
    ok, why = judges.verdict(report, a.min_accuracy, a.min_agreement)
    report["passed"] = {"min_accuracy": a.min_accuracy, "min_agreement": a.min_agreement, "passed": ok}
    print(f"{'subset':<24} {'pairs':>5} {'accuracy':>8} {'both right':>10} {'agreement':>9} {'ties':>6} {'no verdict':>10}")
    for name, r in [*report["subsets"].items(), ("Adversarial (pooled)", report["adversarial"]), ("all", report["all"])]:
        if r:
            print(f"{name:<24} {r['pairs']:>5} {r['accuracy']:>8.3f} {r['both_right']:>10.3f} {r['agreement']:>9.3f} "
                  f"{r['ties']:>6.3f} {r['no_verdict']:>10.3f}")
    print(("passed: " if ok else "FAILED: ") + why)
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))
        html = Path(a.html or Path(a.out).with_suffix(".html"))
        html.write_text(judges.html_table([report]))
        print(f"wrote {a.out} and {html}")
    return 0


def cmd_env(a) -> int:
    import importlib.metadata as md
    import platform

    print(f"evolvelm {__version__}\npython {platform.python_version()} ({platform.platform()})")
    for pkg in ["torch", "transformers", "peft", "tokenizers", "safetensors", "accelerate", "trl", "vllm", "ray", "fastapi", "uvicorn", "openai"]:
        try:
            print(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            print(f"{pkg} not installed")
    try:
        import torch

        print(f"cuda available: {torch.cuda.is_available()}; cpu threads: {torch.get_num_threads()}")
    except ImportError:
        pass
    from evolvelm.sandbox import describe

    box = describe()  # what `sandbox.level: auto` would use for skills that execute answers
    print(f"sandbox: {box['level']}" + (f" ({box['reason']})" if "reason" in box else
                                          f" (bwrap: {box['bwrap']}; drops to slot uids: {box['drops_uid']})"))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="evolvelm", description="Self-evolution rounds for language models.")
    p.add_argument("--version", action="version", version=f"evolvelm {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, fn, help):
        s = sub.add_parser(name, help=help, description=help)
        s.set_defaults(fn=fn)
        s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return s

    s = add("run", cmd_run, "start a run of a recipe (shipped name or YAML path)")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides, e.g. rounds=2")
    s.add_argument("--run-dir", help="where the run lives (default runs/NAME-TIMESTAMP)")
    s = add("resume", cmd_resume, "continue a run from its first uncommitted stage")
    s.add_argument("run_dir")
    s = add("validate", cmd_validate, "check a recipe and its overrides without loading weights")
    s.add_argument("recipe")
    s.add_argument("overrides", nargs="*", metavar="key=value")
    s = add("ls", cmd_ls, "list shipped recipes and the runs in RUNS_DIR")
    s.add_argument("runs_dir", nargs="?", default="runs")
    s = add("report", cmd_report, "write a self-contained HTML report of a run")
    s.add_argument("run_dir")
    s.add_argument("--out", help="default RUN_DIR/report.html")
    s = add("inspect", cmd_inspect, "why a sample was kept or dropped; per-round filter verdicts")
    s.add_argument("run_dir")
    s.add_argument("sample_id", nargs="?", help="a sample id (or unique prefix)")
    s.add_argument("--round", type=int, default=None, help="round to list (default: last with samples)")
    s.add_argument("--dropped", action="store_true", help="list the dropped samples of the round")
    s.add_argument("--limit", type=int, default=20, help="how many dropped samples to list")
    s = add("export", cmd_export, "write the evolved (last promoted) model as a Hugging Face directory")
    s.add_argument("run_dir")
    s.add_argument("out")
    s.add_argument("--merged", action="store_true", help="merge a LoRA adapter (or one module) into the base weights")
    s.add_argument("--module", help="modular runs: the module to merge (default: the only one)")
    s = add("generate", cmd_generate, "answer prompts with the evolved model (modular runs: through the router)")
    s.add_argument("run_dir")
    s.add_argument("prompts", nargs="*", metavar="PROMPT", help="default: one prompt per line of stdin")
    s.add_argument("--max-new-tokens", type=int, default=32)
    s = add("serve", cmd_serve, "serve a run's evolved model (or any model) over the OpenAI API")
    s.add_argument("target", metavar="RUN_DIR|MODEL", help="a run directory, or any model.path reference")
    s.add_argument("--host", default="127.0.0.1", help="default loopback only")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key-env", metavar="VAR", help="require the key held by this environment variable")
    s.add_argument("--allow-loading", action="store_true",
                   help="accept POST /v1/load_lora_adapter (adapter paths on this machine)")
    s.add_argument("--device", default="auto")
    s.add_argument("--batch-rows", type=int, default=64, help="most prompts joined into one generate call")
    s = add("judge", cmd_judge, "audit a judge on LLMBar: accuracy in both orders, positional agreement, ties")
    s.add_argument("action", choices=["audit"])
    s.add_argument("model", metavar="MODEL", help="a model reference, or the baselines random and first")
    s.add_argument("--data", default="../shared/data/llmbar", help="LLMBar's folder (Natural/, Adversarial/*/)")
    s.add_argument("--out", help="write the report as JSON (and an HTML table beside it)")
    s.add_argument("--html", help="where the HTML table goes (default: --out with .html)")
    s.add_argument("--method", default="generate", choices=["generate", "logprobs"],
                   help="generate: read the verdict from a greedy answer; logprobs: the likelier verdict")
    s.add_argument("--limit", type=int, default=0, help="the first N pairs of each subset (default all)")
    s.add_argument("--backend", default="hf", choices=["hf", "openai"])
    s.add_argument("--base-url", default="", help="backend openai: the endpoint (MODEL names its tokenizer)")
    s.add_argument("--api-key-env", metavar="VAR", help="backend openai: the environment variable with the key")
    s.add_argument("--device", default="auto")
    s.add_argument("--seed", type=int, default=0, help="the random baseline's seed")
    s.add_argument("--min-accuracy", type=float, default=0.6, help="pass mark on the Adversarial subsets")
    s.add_argument("--min-agreement", type=float, default=0.6, help="pass mark for positional agreement")
    add("env", cmd_env, "print versions of evolvelm and its libraries")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args, extra = p.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options (`run RECIPE --run-dir DIR rounds=1`)
        if not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra):
            p.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
    if args.command in ("run", "resume") and parallel.world() > 1:  # under accelerate launch
        if parallel.rank() > 0:  # these processes only train: evolvelm.update.parallel
            _quiet_libraries()
            return parallel.follow()
        code = _main(args)
        parallel.release()  # not after an exception: it may have left the others inside a collective, and
        return code         # the launcher stops them when this process dies
    return _main(args)


def _main(args) -> int:
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"evolvelm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
