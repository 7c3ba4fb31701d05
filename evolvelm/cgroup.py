"""Per-program totals for the sandbox: one cgroup per slot bounds the memory (swap included) and the
number of processes and threads of everything a program starts, together.

cgroup v1 (separate `memory` and `pids` hierarchies) and v2 (one unified hierarchy) are both used
through the same three calls: `Slot.prepare` (limits set, the out-of-memory count read), `Slot.join`
(a process moved in: the sandbox's launcher, before it starts the program, so everything the
program forks is inside), and `Slot.oom_killed` (whether the kernel killed something in it since
`prepare`). A slot's cgroup is named after its uid (`evolvelm/slot-UID`, under this process's own
cgroup): a run that crashed leaves one that the next run claiming that uid reuses, and `remove`
deletes it when the sandbox closes. Needs root, or a cgroup delegated to this user.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _own(controller: str) -> str:
    """This process's cgroup path in a hierarchy ('' for v2's unified one)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, names, path = line.split(":", 2)
        if names.split(",") == [controller] or (controller == "" and names == ""):
            return path.lstrip("/")
    raise OSError(f"no {controller or 'unified'} cgroup in /proc/self/cgroup")


def available() -> tuple[str | None, str]:
    """("v2" or "v1", "") when per-slot cgroups can be made here, else (None, what is missing)."""
    if (ROOT / "cgroup.controllers").is_file():  # v2 mounted at the root
        controllers = (ROOT / "cgroup.controllers").read_text().split()
        missing = [c for c in ("memory", "pids") if c not in controllers]
        if missing:
            return None, f"cgroup v2 without the {', '.join(missing)} controller"
        base = ROOT / _own("")
        if not os.access(base, os.W_OK):
            return None, f"cgroup v2: {base} is not writable (not root, and no cgroup delegated to this user)"
        return "v2", ""
    missing = [c for c in ("memory", "pids") if not (ROOT / c / "cgroup.procs").is_file()]
    if missing:
        return None, f"no cgroup v2 and no cgroup v1 {' or '.join(missing)} controller mounted under {ROOT}"
    for c in ("memory", "pids"):
        base = ROOT / c / _own(c)
        if not os.access(base, os.W_OK):
            return None, f"cgroup v1: {base} is not writable (not root, and no cgroup delegated to this user)"
    return "v1", ""


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@dataclass
class Slot:
    """One slot's cgroup (v2: one directory; v1: one in `memory`, one in `pids`)."""

    kind: str
    dirs: dict  # controller ("" for v2) -> directory
    oom_before: int = 0

    @classmethod
    def make(cls, kind: str, uid: int) -> Slot:
        name = f"evolvelm/slot-{uid}"
        if kind == "v2":
            parent = ROOT / _own("") / "evolvelm"
            parent.mkdir(exist_ok=True)
            try:  # let the slots below have memory and pids limits
                _write(parent / "cgroup.subtree_control", "+memory +pids")
            except OSError as e:
                raise OSError(f"cgroup v2: cannot enable memory and pids below {parent} ({e}); run evolvelm in a "
                              f"delegated cgroup without processes of its own (systemd-run --scope -p Delegate=yes)") from e
            dirs = {"": parent / f"slot-{uid}"}
        else:
            dirs = {c: ROOT / c / _own(c) / name for c in ("memory", "pids")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        return cls(kind, dirs)

    def prepare(self, memory_bytes: int, pids: int) -> None:
        """Set the limits (each time: a reused cgroup may hold another run's) and read the OOM count."""
        if self.kind == "v2":
            d = self.dirs[""]
            _write(d / "memory.max", str(memory_bytes))
            _write(d / "memory.swap.max", "0")  # memory.max alone lets a program spill into swap
            _write(d / "pids.max", str(pids))
        else:
            m = self.dirs["memory"]
            swap = m / "memory.memsw.limit_in_bytes"
            if swap.exists():
                _write(swap, "-1")  # memory + swap may never be below memory alone: lift it, then set both
            _write(m / "memory.limit_in_bytes", str(memory_bytes))
            if swap.exists():
                _write(swap, str(memory_bytes))
            _write(self.dirs["pids"] / "pids.max", str(pids))
        peak = self.dirs.get("", self.dirs.get("memory")) / ("memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes")
        try:
            _write(peak, "0")  # v1, and v2 since Linux 6.12: the peak restarts here
        except OSError:
            pass
        self.oom_before = self._ooms()

    def peak(self) -> int | None:
        """The most memory the cgroup held since `prepare` (bytes; None where the kernel keeps no peak)."""
        d = self.dirs.get("", self.dirs.get("memory"))
        f = d / ("memory.peak" if self.kind == "v2" else "memory.max_usage_in_bytes")
        return int(f.read_text()) if f.exists() else None

    def join(self, pid: int) -> None:
        for d in self.dirs.values():
            _write(d / "cgroup.procs", str(pid))

    def oom_killed(self) -> bool:
        return self._ooms() > self.oom_before

    def _ooms(self) -> int:
        """How many times the kernel killed a process in this cgroup for memory (v1 without an
        oom_kill count: how often an allocation hit the limit)."""
        d = self.dirs.get("", self.dirs.get("memory"))
        text = (d / ("memory.events" if self.kind == "v2" else "memory.oom_control")).read_text()
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        if "oom_kill" in counts:
            return int(counts["oom_kill"])
        return int((d / "memory.failcnt").read_text())

    def processes(self) -> list[int]:
        return [int(p) for d in self.dirs.values() for p in (d / "cgroup.procs").read_text().split()]

    def remove(self) -> None:
        """Delete the cgroup (it must be empty; one still busy is left for the next run to reuse)."""
        for d in self.dirs.values():
            try:
                d.rmdir()
            except OSError:
                pass
