"""The run directory: resolved config, per-stage atomic commits, and the experience store.

    RUN_DIR/
      config.yaml           the resolved config (what `resume` continues with)
      store.sqlite          samples, verdicts, evaluations and the manifest
      rounds/0003/update/   files a stage wrote (e.g. the trained model), renamed from .staging-update
      summary.json          the machine-readable outcome, rewritten after every round
      checker_errors.jsonl  completions a user checker raised on (never scored; the stage was not committed)

Commit protocol for a stage: write files into `rounds/NNNN/.staging-STAGE/`, rename that directory
to `rounds/NNNN/STAGE/`, then in ONE SQLite transaction insert the stage's rows and its manifest
entry. Resume trusts only the manifest: a stage without a manifest entry is redone from scratch
(its leftover directory is deleted first), and because its rows were in the same transaction as
the missing manifest entry, nothing of it is in the store. Sample ids are content hashes and
primary keys, so a sample can never be stored twice.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

from evolvelm.config import Config, ConfigError, dump, load
from evolvelm.tasks.data import pin
from evolvelm.types import Sample, Verdict

SCHEMA = """
CREATE TABLE IF NOT EXISTS manifest (
    round INTEGER, stage TEXT, info TEXT, committed_at REAL, PRIMARY KEY (round, stage));
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY, round INTEGER, skill TEXT, difficulty INTEGER, prompt TEXT, completion TEXT,
    model_version TEXT, seed INTEGER, k INTEGER, temperature REAL, mean_logprob REAL, true_answer TEXT, member INTEGER,
    context TEXT, rendered TEXT DEFAULT '');
CREATE TABLE IF NOT EXISTS verdicts (
    sample_id TEXT, round INTEGER, position INTEGER, filter TEXT, version TEXT, kept INTEGER, reason TEXT,
    PRIMARY KEY (sample_id, filter));
CREATE TABLE IF NOT EXISTS evals (
    round INTEGER, split TEXT, skill TEXT, difficulty INTEGER, accuracy REAL, n INTEGER, model_version TEXT,
    checker_version TEXT, PRIMARY KEY (round, split, skill, difficulty));
"""
SAMPLE_COLUMNS = ["id", "round", "skill", "difficulty", "prompt", "completion", "model_version", "seed", "k",
                  "temperature", "mean_logprob", "true_answer", "member", "context", "rendered"]
STAGES = ["acquire", "refine", "update", "eval", "gate"]


def _failpoint(name: str) -> None:
    """Crash-test hook: SIGKILL this process at `name` when EVOLVELM_KILL_AT equals it, or send it the signal
    EVOLVELM_KILL_SIGNAL names (SIGINT: a Ctrl-C at that moment) (tests only)."""
    if os.environ.get("EVOLVELM_KILL_AT") == name:
        os.kill(os.getpid(), getattr(signal, os.environ.get("EVOLVELM_KILL_SIGNAL", "SIGKILL")))


class CorruptRun(ConfigError):
    """The run directory is not one evolvelm can read."""


class Run:
    """An open run directory."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.db = self.root / "store.sqlite"

    @classmethod
    def create(cls, root: Path, cfg: Config) -> "Run":
        """Start a new run in `root` (which must not already hold one)."""
        root = Path(root)
        if (root / "config.yaml").exists():
            raise ConfigError(f"{root} already holds a run; use `evolvelm resume {root}`")
        root.mkdir(parents=True, exist_ok=True)
        run = cls(root)
        with run.connect() as con:
            con.executescript(SCHEMA)
        pin(cfg, root)  # skills from data: the splits this run uses, stored beside it
        tmp = root / "config.yaml.tmp"
        tmp.write_text(dump(cfg))
        tmp.replace(root / "config.yaml")  # written last: a run exists once its config does
        return run

    @classmethod
    def open(cls, root: Path) -> "Run":
        """Open an existing run, checking that it is readable."""
        root = Path(root)
        if not root.is_dir():
            raise CorruptRun(f"run directory not found: {root}")
        if not (root / "config.yaml").is_file() or not (root / "store.sqlite").is_file():
            raise CorruptRun(f"{root} is not an evolvelm run directory (missing config.yaml or store.sqlite)")
        run = cls(root)
        try:
            with closing(run.connect()) as con:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.DatabaseError as e:
            raise CorruptRun(f"{run.db} is corrupt: {e}") from e
        if not {"manifest", "samples", "verdicts", "evals"} <= tables:
            raise CorruptRun(f"{run.db} is missing tables; found {sorted(tables)}")
        with closing(run.connect()) as con, con:  # runs from before rendered prompts were stored
            if "rendered" not in {r[1] for r in con.execute("PRAGMA table_info(samples)")}:
                con.execute("ALTER TABLE samples ADD COLUMN rendered TEXT DEFAULT ''")
        return run

    def config(self) -> Config:
        try:
            cfg = load(self.root / "config.yaml")
        except ConfigError as e:
            raise CorruptRun(f"{self.root / 'config.yaml'}: {e}") from e
        pin(cfg, self.root)  # the splits it started with, whatever the data file holds now
        return cfg

    def connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.db, timeout=30)
        con.row_factory = sqlite3.Row
        return con

    # --- manifest and stage commits -------------------------------------------------------------

    def stage_dir(self, rnd: int, stage: str) -> Path:
        return self.root / "rounds" / f"{rnd:04d}" / stage

    def done(self, rnd: int, stage: str) -> dict | None:
        """The manifest info of a committed stage, or None if it has not been committed."""
        with closing(self.connect()) as con:
            row = con.execute("SELECT info FROM manifest WHERE round=? AND stage=?", (rnd, stage)).fetchone()
        return None if row is None else json.loads(row["info"])

    def manifest(self) -> list[dict]:
        with closing(self.connect()) as con:
            rows = con.execute("SELECT round, stage, info, committed_at FROM manifest ORDER BY round, committed_at").fetchall()
        return [dict(round=r["round"], stage=r["stage"], info=json.loads(r["info"]), committed_at=r["committed_at"]) for r in rows]

    def promoted_rounds(self, before: int) -> list[int]:
        """The rounds 1..before-1 whose gate promoted them: what the current model was trained on."""
        return [m["round"] for m in self.manifest() if m["stage"] == "gate" and 0 < m["round"] < before
                and m["info"]["promoted"]]

    def staging(self, rnd: int, stage: str) -> Path:
        """A fresh, empty staging directory for a stage; leftovers of an uncommitted attempt are removed."""
        final, tmp = self.stage_dir(rnd, stage), self.stage_dir(rnd, f".staging-{stage}")
        for d in (final, tmp):  # `final` without a manifest entry is a leftover of a crash
            if d.exists():
                shutil.rmtree(d)
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, rnd: int, stage: str, info: dict, samples: list[Sample] = (), verdicts: bool = False,
               evals: list[tuple] = ()) -> None:
        """Make a stage durable: rename its staging directory (if any) into place, then insert its rows
        and its manifest entry in one transaction.

        `samples` are inserted as new raw samples, or with `verdicts=True` only their verdicts are.
        `evals` rows are (split, skill, difficulty, accuracy, n, model_version, checker_version).
        """
        tmp, final = self.stage_dir(rnd, f".staging-{stage}"), self.stage_dir(rnd, stage)
        _failpoint(f"{rnd}:{stage}:before-rename")
        if tmp.exists():
            tmp.rename(final)
        _failpoint(f"{rnd}:{stage}:before-manifest")
        with closing(self.connect()) as con, con:
            if verdicts:
                con.executemany("INSERT INTO verdicts VALUES (?,?,?,?,?,?,?)",
                                [(s.id, rnd, i, v.filter, v.version, int(v.kept), v.reason)
                                 for s in samples for i, v in enumerate(s.verdicts)])
            else:
                rows = [s.to_row() for s in samples]
                con.executemany(f"INSERT INTO samples VALUES ({','.join('?' * len(SAMPLE_COLUMNS))})",
                                [[r[c] for c in SAMPLE_COLUMNS] for r in rows])
            con.executemany("INSERT INTO evals VALUES (?,?,?,?,?,?,?,?)", [(rnd, *e) for e in evals])
            con.execute("INSERT INTO manifest VALUES (?,?,?,?)", (rnd, stage, json.dumps(info), time.time()))
        _failpoint(f"{rnd}:{stage}:after-manifest")

    def commit_gate(self, rnd: int, kept, promoted: bool, reason: str, decision: str = "", **more) -> None:
        """Commit round `rnd`'s gate: the model kept from here on (a State: the round's candidate when it
        is promoted, else the model the round started from; round 0: the base model), and why."""
        self.commit(rnd, "gate", {**kept.info(), "promoted": promoted, "reason": reason, "decision": decision,
                                  "seconds": 0.0, **more})

    def fork(self, root: Path, rnd: int) -> "Run":
        """A scratch copy of this run as it stands before round `rnd`, in `root` (anything there before is
        removed): the store copied, every other file and earlier round linked, so stages of round `rnd`
        run there as here, and `adopt` can take them back."""
        shutil.rmtree(root, ignore_errors=True)
        (root / "rounds").mkdir(parents=True)
        with closing(self.connect()) as src, closing(sqlite3.connect(root / "store.sqlite")) as dst:
            src.backup(dst)
        for entry in self.root.iterdir():
            if entry.name not in ("rounds", "trials", "summary.json", "report.html") and "sqlite" not in entry.name:
                (root / entry.name).symlink_to(os.path.relpath(entry, root))
        for entry in (self.root / "rounds").iterdir() if (self.root / "rounds").is_dir() else ():
            if entry.name.isdigit() and int(entry.name) < rnd:
                (root / "rounds" / entry.name).symlink_to(os.path.relpath(entry, root / "rounds"))
        return Run(root)

    def adopt(self, other: "Run", rnd: int, stages: list[str], info: dict[str, dict]) -> None:
        """Make `other`'s committed `stages` of round `rnd` this run's own (`other` forked from it): move
        their directories here, then insert their rows and manifest entries, with `info` in place of
        theirs where given, in one transaction. Directories moved before a crash have no manifest entry
        here, so a resumed run treats them as leftovers."""
        for stage in stages:
            src, dst = other.stage_dir(rnd, stage), self.stage_dir(rnd, stage)
            if dst.exists():
                shutil.rmtree(dst)
            if src.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                src.rename(dst)
        with closing(self.connect()) as con:
            con.execute("ATTACH DATABASE ? AS other", (str(other.db),))
            with con:
                for table in ("samples", "verdicts", "evals"):
                    con.execute(f"INSERT INTO {table} SELECT * FROM other.{table} WHERE round=?", (rnd,))
                for stage in stages:
                    entry = info.get(stage) or other.done(rnd, stage)
                    con.execute("INSERT INTO manifest VALUES (?,?,?,?)", (rnd, stage, json.dumps(entry), time.time()))
        _failpoint(f"{rnd}:adopt:after-manifest")

    def record_checker_errors(self, failures: list[dict]) -> Path:
        """Append the completions a checker raised on to `checker_errors.jsonl`, each with the last stage
        committed before it (the stage that raised is not committed: `resume` redoes it)."""
        last = max(self.manifest(), key=lambda m: m["committed_at"], default=None)
        after = f"{last['round']}:{last['stage']}" if last else "nothing"
        path = self.root / "checker_errors.jsonl"
        with path.open("a") as f:
            for failure in failures:
                f.write(json.dumps({"after": after, "time": round(time.time(), 3), **failure}) + "\n")
        return path

    # --- queries --------------------------------------------------------------------------------

    def samples(self, rnd: int) -> list[Sample]:
        """The raw samples of a round, in acquisition order, with any verdicts they were given."""
        with closing(self.connect()) as con:
            rows = con.execute(f"SELECT {','.join(SAMPLE_COLUMNS)} FROM samples WHERE round=? ORDER BY rowid", (rnd,)).fetchall()
            verdicts = con.execute("SELECT * FROM verdicts WHERE round=? ORDER BY sample_id, position", (rnd,)).fetchall()
        by_id: dict[str, list] = {}
        for v in verdicts:
            by_id.setdefault(v["sample_id"], []).append(v)
        out = []
        for r in rows:
            s = Sample(**{c: r[c] for c in SAMPLE_COLUMNS if c != "id"})
            s.verdicts = [Verdict(v["filter"], v["version"], bool(v["kept"]), v["reason"]) for v in by_id.get(r["id"], [])]
            s.kept = all(v.kept for v in s.verdicts)
            out.append(s)
        return out

    def query(self, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
        with closing(self.connect()) as con:
            return con.execute(sql, args).fetchall()
