"""Run model-written Python programs in isolation.

Levels (``Sandbox(level=...)``):

- ``subprocess``: a fresh process in its own session and temporary directory, scrubbed environment,
  stdin closed, output captured up to a cap, wall-clock deadline kept by the parent, resource limits
  (CPU seconds, address space, file size, open files, processes, no core dumps), the process group
  killed and reaped. When evolvelm runs as root the program first drops to an unprivileged uid (one
  per parallel slot), which also lets every process it left behind be killed by uid. This level does
  not hide the file system or the network: it guards against accidents, not against attacks.
- ``bwrap``: the same, then bubblewrap (Debian package ``bubblewrap``) puts the program in new user,
  PID, network, IPC and UTS namespaces with a read-only /usr, a private /tmp, the work directory as
  the only writable place, and nothing else of the host mounted.
- both levels, as root: one cgroup per slot (``evolvelm.cgroup``) bounds the memory and the processes
  of a program in total; the launcher joins it before it starts the program.
- ``auto``: ``bwrap`` where it works here, with the cgroups; otherwise an error naming what is
  missing, unless ``allow_unsafe=True``, which runs with what there is (``describe()["unbounded"]``).

Order matters: limits set while still root are not enforced (root ignores the process-count limit),
so the child drops its uid (done by ``subprocess.Popen(user=...)`` before exec), then a small
launcher sets the limits, then bwrap starts, then the program. As root at the bwrap level the
launcher itself starts as root: it mounts the working directory's tmpfs (``disk_mb`` bytes and
``FILES_PER_MB`` inodes per MB; bwrap's own tmpfs cannot bound inodes) in a mount namespace of its
own, which vanishes with it, and then drops to the slot's uid before it sets the limits.

Verdicts: pass / fail / timeout / memory / output_limit / sandbox_error. ``sandbox_error`` means the
infrastructure failed (bwrap could not set up, the launcher could not exec); callers must never
score it as a wrong answer.
"""

from __future__ import annotations

import json
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from evolvelm import cgroup

LEVELS = ("auto", "subprocess", "bwrap")
VERDICTS = ("pass", "fail", "timeout", "memory", "output_limit", "sandbox_error")
UID_BASE = 61000  # as root, each slot runs as its own uid/gid from UID_BASE up (see _claim_uids)
KILL = shutil.which("kill") or "/bin/kill"


class SandboxUnavailable(RuntimeError):
    """The requested isolation level cannot be had on this machine."""


FILES_PER_MB = 64  # disk_mb also bounds the files and directories (inodes): 64 per MB, 4,096 at 64 MB


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0  # wall-clock deadline, enforced by the parent
    cpu_s: int = 10  # RLIMIT_CPU, seconds
    memory_mb: int = 512  # RLIMIT_AS
    output_bytes: int = 65536  # stdout and stderr each; more is an output_limit verdict
    file_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    processes: int = 32  # RLIMIT_NPROC, per slot uid (only enforced for a non-root uid)
    disk_mb: int = 64  # bwrap: the working directory and /tmp together (one size-limited tmpfs), and
                       # FILES_PER_MB files per MB in them (as root)


@dataclass
class Result:
    verdict: str
    returncode: int | None  # negative: killed by that signal; None: never started
    stdout: str
    stderr: str
    wall_s: float
    level: str
    detail: str = ""  # why, for everything but pass/fail

    def to_dict(self) -> dict:
        return asdict(self)


# Runs as the (already unprivileged) child: lowers every limit, never above the inherited hard
# limit; becomes the subreaper of the program, runs it, then kills and reaps whatever the program
# left behind (orphans are reparented to it); SIGTERM from the parent stops the program early. Writes "exec-ok" (or why the exec failed) to the
# status fd, which only bwrap, not the program, inherits. Kept small: it starts on every execution.
_LAUNCHER = """
import ctypes, os, resource, signal, sys
status, go, keep = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
if go >= 0:  # wait until the parent has moved this process into the slot's cgroup
    os.read(go, 1)
    os.close(go)
if sys.argv[4]:  # as root: the work tmpfs (bytes and inodes) in a mount namespace of our own, then drop
    where, opts, uid = sys.argv[4].rsplit(":", 2)
    libc, uid = ctypes.CDLL(None, use_errno=True), int(uid)
    if libc.unshare(0x20000) or libc.mount(b"none", b"/", None, 0x44000, None) or libc.mount(
            b"tmpfs", where.encode(), b"tmpfs", 6, opts.encode()):  # NEWNS; rec private; nosuid, nodev
        os.write(status, ("exec-failed: work tmpfs: " + os.strerror(ctypes.get_errno()) + "\\n").encode())
        sys.exit(127)
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
for name, v in zip(sys.argv[5].split(","), map(int, sys.argv[6].split(","))):
    r = getattr(resource, name)
    hard = resource.getrlimit(r)[1]
    soft, top = v, v + (name == "RLIMIT_CPU")  # SIGXCPU at the soft limit before SIGKILL
    if hard != resource.RLIM_INFINITY:
        soft, top = min(soft, hard), min(top, hard)
    resource.setrlimit(r, (soft, top))
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
check_r, check_w = os.pipe()  # close-on-exec: EOF without data means the exec worked
pid = os.fork()
if pid == 0:
    os.close(check_r)
    os.set_inheritable(status, keep)
    try:
        os.execv(sys.argv[7], sys.argv[7:])
    except OSError as e:
        os.write(check_w, str(e).encode())
    os._exit(127)
signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, 9))  # the parent's stop: clean up after
os.close(check_w)
failed = os.read(check_r, 4096).decode()
os.write(status, ("exec-failed: " + failed if failed else "exec-ok").encode() + b"\\n")
os.close(status)
st = os.waitpid(pid, 0)[1]
me = str(os.getpid())
while True:
    try:
        if os.waitpid(-1, os.WNOHANG)[0]:
            continue
    except ChildProcessError:
        break  # nothing left
    for p in os.listdir("/proc"):
        try:
            if p.isdigit() and open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1] == me:
                os.kill(int(p), 9)
        except (OSError, IndexError):
            pass
    try:
        os.wait()
    except ChildProcessError:
        break
code = os.waitstatus_to_exitcode(st)
os._exit(code if code >= 0 else 128 - code)
"""


def _bwrap() -> str | None:
    return shutil.which("bwrap")


def _world_reachable(path: Path) -> bool:
    """Can any user execute ``path`` (every parent directory searchable by others)?"""
    path = path.resolve()
    try:
        return os.stat(path).st_mode & 0o001 and all(os.stat(p).st_mode & 0o001 for p in path.parents)
    except OSError:
        return False


def interpreter() -> str:
    """A Python any uid can run: ours if reachable, else the system's (/usr/bin/python3)."""
    for candidate in (sys.executable, shutil.which("python3", path="/usr/bin:/usr/local/bin")):
        if candidate and _world_reachable(Path(candidate)):
            return str(Path(candidate).resolve())
    raise SandboxUnavailable(
        f"no Python interpreter every user can run ({sys.executable} is not reachable by an "
        "unprivileged uid); install python3 under /usr (apt-get install python3)"
    )


def _bwrap_args(python: str, work: str, status_fd: int, disk_mb: int, mounted: bool) -> list[str]:
    """Namespaces, a read-only system, and one tmpfs of `disk_mb` as the working directory /sandbox,
    holding /tmp too (/tmp -> /sandbox/.tmp): what the program writes, in all, fits in it. `mounted`:
    the launcher mounted it at WORK/disk, with an inode budget too (bwrap's own tmpfs has none). The
    program file is bound in read-only; nothing else of the host is writable."""
    args = [_bwrap(), "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):  # merged-/usr systems keep these as symlinks
        p = Path("/") / link
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), str(p)]
        elif p.is_dir():
            args += ["--ro-bind", str(p), str(p)]
    prefix = Path(python).resolve().parents[1]  # .../bin/python3 -> ...
    if not str(prefix).startswith("/usr"):
        args += ["--ro-bind", str(prefix), str(prefix)]
    disk = ["--bind", str(Path(work) / "disk"), "/sandbox"] if mounted else ["--size", str(disk_mb << 20), "--tmpfs", "/sandbox"]
    args += ["--proc", "/proc", "--dev", "/dev", *disk, "--dir", "/sandbox/.tmp", "--symlink", "/sandbox/.tmp", "/tmp",
             "--ro-bind", str(Path(work) / "main.py"), "/sandbox/main.py",
             "--chdir", "/sandbox", "--hostname", "sandbox", "--json-status-fd", str(status_fd)]
    return args


class Sandbox:
    """Runs Python source in isolation; ``run`` for one program, ``map`` for a pool."""

    def __init__(self, level: str = "auto", limits: Limits = Limits(), allow_unsafe: bool = False,
                 workers: int | None = None):
        if not sys.platform.startswith("linux"):
            raise SandboxUnavailable("the sandbox needs Linux (process namespaces, /proc, prctl)")
        if level not in LEVELS:
            raise ValueError(f"sandbox level must be one of {list(LEVELS)}, got {level!r}")
        self.limits = limits
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.root = os.geteuid() == 0
        self.uids = _claim_uids(self, self.workers) if self.root else [None] * self.workers
        self.python = interpreter()
        # Not root: the process-count limit counts all our uid's processes, so allow for them.
        self.nproc = limits.processes + (0 if self.root else _processes_of(os.getuid()))
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self.cgroups, self.no_cgroups = self._make_cgroups()
        self.level = "subprocess"
        self.mount_disk, self.no_mount = self.root, "" if self.root else "not root"  # the inode budget
        why = self._bwrap_problem() if level != "subprocess" else ""
        if why and not allow_unsafe:
            raise SandboxUnavailable(
                f"sandbox level {level!r} needs bubblewrap, which does not work here: {why}. "
                "Install it (apt-get install bubblewrap), or accept weaker isolation explicitly "
                "with level 'subprocess' or allow_unsafe"
            )
        if level == "auto" and self.no_cgroups and not allow_unsafe:
            raise SandboxUnavailable(
                f"sandbox level 'auto' bounds the memory and processes of each program in total with a cgroup, "
                f"which it cannot make here: {self.no_cgroups}. Run as root on a machine with the memory and pids "
                "controllers (cgroup v1 or v2), or accept per-process limits only with allow_unsafe"
            )

    def _make_cgroups(self) -> tuple[list | None, str]:
        """One cgroup per slot (evolvelm.cgroup), removed when this sandbox goes; or None and why not."""
        if not self.root:
            return None, "not root (the sandbox makes its cgroups as root)"
        kind, why = cgroup.available()
        if kind is None:
            return None, why
        try:
            slots = [cgroup.Slot.make(kind, uid) for uid in self.uids]
        except OSError as e:
            return None, str(e)
        weakref.finalize(self, lambda: [c.remove() for c in slots])
        return slots, ""

    def _bwrap_problem(self) -> str:
        """Switch to bwrap if a trivial program runs under it; else say why not. As root, first with
        the work tmpfs the launcher mounts (an inode budget); without it if that cannot be had."""
        if not _bwrap():
            return "bwrap is not installed"
        self.level = "bwrap"
        probe = self._execute("print(6 * 7)", slot=0, expect_stdout="42")
        if probe.verdict != "pass" and self.mount_disk:
            self.mount_disk, self.no_mount = False, probe.detail or probe.stderr.strip()[-300:]
            probe = self._execute("print(6 * 7)", slot=0, expect_stdout="42")
        if probe.verdict == "pass":
            return ""
        self.level = "subprocess"
        return probe.detail or probe.stderr.strip()[-300:] or f"probe gave {probe.verdict}"

    def describe(self) -> dict:
        """Which isolation this sandbox uses (recorded in run manifests)."""
        unbounded = ([] if self.level == "bwrap" else ["disk_mb"]) + ([] if self.cgroups else ["memory_total", "processes_total"]) \
            + ([] if self.level != "bwrap" or self.mount_disk else ["files"])
        return {"level": self.level, "python": self.python, "drops_uid": self.root, "workers": self.workers,
                "limits": asdict(self.limits), "cgroup": self.cgroups[0].kind if self.cgroups else None,
                "unbounded": unbounded, **({"why_unbounded": self.no_cgroups} if self.no_cgroups else {}),
                **({"why_files_unbounded": self.no_mount} if "files" in unbounded else {})}

    # -- one program --------------------------------------------------------------------------------

    def run(self, code: str, expect_stdout: str | None = None) -> Result:
        """Run ``code``; pass means exit status 0 (and stdout equal to ``expect_stdout`` if given)."""
        slot = self._slots.get()  # a slot (and its uid) runs one program at a time
        try:
            return self._execute(code, slot, expect_stdout)
        finally:
            self._slots.put(slot)

    def map(self, codes: list[str], expect: list[str | None] | None = None) -> list[Result]:
        """Run many programs, ``workers`` at a time (each slot its own uid); results in order."""
        expect = expect or [None] * len(codes)
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(self.run, codes, expect))

    def _execute(self, code: str, slot: int, expect_stdout: str | None = None) -> Result:
        lim = self.limits
        uid = self.uids[slot]
        start = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="evolvelm-sbx-") as work:
            os.chmod(work, 0o777 if uid is not None else 0o700)
            Path(work, "main.py").write_text(code)
            status_r, status_w = os.pipe()
            names, values = zip(
                ("RLIMIT_CPU", lim.cpu_s), ("RLIMIT_AS", lim.memory_mb << 20),
                ("RLIMIT_FSIZE", lim.file_mb << 20), ("RLIMIT_NOFILE", lim.open_files),
                ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", self.nproc))
            program = [self.python, "-I", "main.py"]
            mount = ""  # as root at the bwrap level: the launcher mounts the work tmpfs, then drops to uid
            if self.level == "bwrap":
                if self.mount_disk and uid is not None:
                    os.mkdir(Path(work) / "disk")
                    mount = f"{work}/disk:size={lim.disk_mb << 20},nr_inodes={lim.disk_mb * FILES_PER_MB},mode=0777:{uid}"
                program = _bwrap_args(self.python, work, status_w, lim.disk_mb, bool(mount)) + program
            group = self.cgroups[slot] if self.cgroups else None
            go_r, go_w = os.pipe() if group else (-1, -1)
            argv = [self.python, "-I", "-S", "-c", _LAUNCHER, str(status_w), str(go_r),
                    str(int(self.level == "bwrap")), mount, ",".join(names), ",".join(map(str, values))]
            argv += program
            try:
                if group:
                    group.prepare(lim.memory_mb << 20, self.limits.processes)
                proc = subprocess.Popen(
                    argv, cwd=work, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    start_new_session=True, close_fds=True,
                    pass_fds=(status_w,) + ((go_r,) if group else ()),
                    **({"user": uid, "group": uid, "extra_groups": []} if uid is not None and not mount else {}))
            except OSError as e:
                for fd in (go_r, go_w) if group else ():
                    os.close(fd)
                return Result("sandbox_error", None, "", "", time.monotonic() - start, self.level,
                              f"could not start: {e}")
            finally:
                os.close(status_w)
            if group:  # into the slot's cgroup before the launcher starts the program
                os.close(go_r)
                try:
                    group.join(proc.pid)
                except OSError as e:
                    proc.kill()
                    os.close(go_w)
                    proc.communicate()
                    return Result("sandbox_error", None, "", "", time.monotonic() - start, self.level,
                                  f"could not move the program into its cgroup: {e}")
                os.write(go_w, b"1")
                os.close(go_w)
            out, err, why = self._collect(proc, start, uid)
            os.set_blocking(status_r, False)  # all written before exit; never wait on it
            with os.fdopen(status_r, "rb") as f:
                status = (f.read() or b"").decode("utf-8", "replace")
        wall = time.monotonic() - start
        rc = proc.returncode
        stdout, stderr = (b.decode("utf-8", "replace") for b in (out, err))
        if "exec-ok" not in status:
            return Result("sandbox_error", rc, stdout, stderr, wall, self.level,
                          "could not start the program: " + status.strip()[-300:])
        if self.level == "bwrap" and '"child-pid"' not in status and why != "timeout":
            return Result("sandbox_error", rc, stdout, stderr, wall, self.level,
                          "bwrap did not start the program: " + stderr.strip()[-300:])
        if group and group.oom_killed():
            return Result("memory", rc, stdout, stderr, wall, self.level,
                          f"its processes together over {lim.memory_mb} MB (cgroup {group.kind})")
        verdict, detail = self._verdict(rc, stdout, stderr, why, expect_stdout)
        return Result(verdict, rc, stdout, stderr, wall, self.level, detail)

    def _collect(self, proc: subprocess.Popen, start: float, uid: int | None):
        """Read stdout/stderr up to the cap until exit or deadline, then kill everything the
        program left; returns (stdout, stderr, reason it was stopped or '')."""
        cap = self.limits.output_bytes
        bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
        over = threading.Event()

        def pump(stream):
            buf = bufs[stream]
            while chunk := stream.read1(65536):
                buf += chunk[: cap + 1 - len(buf)]
                if len(buf) > cap:
                    over.set()
                    break
            stream.close()

        readers = [threading.Thread(target=pump, args=(s,), daemon=True) for s in bufs]
        for t in readers:
            t.start()
        deadline = start + self.limits.wall_s
        reason = ""
        pidfd = os.pidfd_open(proc.pid)  # readable the moment the launcher exits
        try:
            while not select.select([pidfd], [], [], max(0.0, min(0.05, deadline - time.monotonic())))[0]:
                if over.is_set() or time.monotonic() > deadline:
                    reason = "output_limit" if over.is_set() else "timeout"
                    break
        finally:
            os.close(pidfd)
        if not reason and over.is_set():
            reason = "output_limit"
        if reason:  # the launcher kills the program and reaps all it left; SIGKILL if it cannot
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        _killpg(proc.pid)
        proc.wait()
        if uid is not None:  # kill(-1) as the slot uid reaches exactly that uid's processes
            subprocess.run([KILL, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={},
                           stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/", check=False)
            _await_reaped(uid)
        for t in readers:  # a process that escaped the group (not root: no uid sweep) holds pipes
            t.join(timeout=0.5)
        return bytes(bufs[proc.stdout][:cap]), bytes(bufs[proc.stderr][:cap]), reason

    def _verdict(self, rc: int, stdout: str, stderr: str, why: str, expect: str | None):
        if why:
            return why, {"timeout": f"wall clock over {self.limits.wall_s}s",
                         "output_limit": f"output over {self.limits.output_bytes} bytes"}[why]
        if rc in (-signal.SIGXCPU, 128 + signal.SIGXCPU):
            return "timeout", f"CPU time over {self.limits.cpu_s}s"
        tail = stderr[-2000:]
        if rc in (-signal.SIGXFSZ, 128 + signal.SIGXFSZ) or rc and "File too large" in tail:
            return "output_limit", f"file over {self.limits.file_mb} MB"
        if rc != 0 and "No space left on device" in tail:
            return "disk_limit", (f"working directory and /tmp over {self.limits.disk_mb} MB or "
                                  f"{self.limits.disk_mb * FILES_PER_MB} files")
        if rc != 0 and ("MemoryError" in tail or "Cannot allocate memory" in tail):
            return "memory", f"address space over {self.limits.memory_mb} MB"
        if rc != 0:
            return "fail", ""
        if expect is not None and stdout.strip() != expect.strip():
            return "fail", ""
        return "pass", ""


_claimed: dict[int, tuple] = {}  # uid -> (its lock file, weakref to the Sandbox using it)


def _claim_uids(owner: "Sandbox", n: int) -> list[int]:
    """`n` slot uids that neither another process nor a live Sandbox of this one is using (an flock
    per uid, held until this process ends): two users of one uid would kill each other's programs
    in the sweep."""
    import fcntl

    out = []
    for uid in range(UID_BASE, UID_BASE + 4096):
        if len(out) == n:
            break
        if uid in _claimed:
            if _claimed[uid][1]() is None:  # its Sandbox is gone: ours to reuse
                _claimed[uid] = (_claimed[uid][0], weakref.ref(owner))
                out.append(uid)
            continue
        f = open(Path(tempfile.gettempdir()) / f"evolvelm-sandbox-uid-{uid}.lock", "w")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            continue
        _claimed[uid] = (f, weakref.ref(owner))
        out.append(uid)
    if len(out) < n:
        raise SandboxUnavailable(f"no free sandbox uids in {UID_BASE}..{UID_BASE + 4095}")
    return out


def _processes_of(uid: int) -> int:
    return sum(1 for p in Path("/proc").iterdir() if p.name.isdigit() and _owner(p) == uid)


def _await_reaped(uid: int, timeout: float = 10.0) -> None:
    """Wait until the slot uid has no process left, zombies included: what the launcher could not
    reap (it was killed itself) is reparented to init, which may reap late, and until then counts
    against the next program's process limit."""
    deadline = time.monotonic() + timeout
    while _processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.05)


def _owner(p: Path) -> int | None:
    try:
        return p.stat().st_uid
    except OSError:
        return None


def _killpg(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def describe() -> dict:
    """What isolation this machine offers (for ``evolvelm env``)."""
    try:
        return {**Sandbox("auto", allow_unsafe=True, workers=1).describe(), "bwrap": _bwrap() or "not installed"}
    except SandboxUnavailable as e:
        return {"level": "unavailable", "reason": str(e)}


# -- the process-wide sandbox that skills' checkers use ------------------------------------------------

_settings: dict = {"level": "auto", "allow_unsafe": False, "workers": None, "limits": Limits()}
_shared: Sandbox | None = None


def configure(level: str = "auto", allow_unsafe: bool = False, workers: int | None = None,
              limits: Limits = Limits()) -> None:
    """Set how checkers execute answers (a run calls this from its `sandbox` config section)."""
    global _shared
    new = {"level": level, "allow_unsafe": allow_unsafe, "workers": workers or None, "limits": limits}
    if new != _settings:
        _settings.update(new)
        _shared = None


def configure_from(sb) -> None:
    """`configure` from a config's `sandbox` section (evolvelm.config.SandboxConfig)."""
    configure(sb.level, sb.allow_unsafe, sb.workers, Limits(wall_s=sb.wall_s, cpu_s=max(1, int(sb.wall_s)),
                                                            memory_mb=sb.memory_mb, disk_mb=sb.disk_mb))


def info(skills: list[str]) -> dict:
    """{"sandbox": level description} when some skill executes its answers, for the eval manifest."""
    from evolvelm.tasks import get_task

    return {"sandbox": shared().describe()} if any(get_task(s).judge or get_task(s).executes for s in skills) else {}


def shared() -> Sandbox:
    """The sandbox configured by `configure`, built on first use."""
    global _shared
    if _shared is None:
        _shared = Sandbox(**_settings)
    return _shared


# Evaluates a batch of expressions, one JSON line each: [true, str(value)] or [false, "Error: message"].
_EVAL_BATCH = """import json
for e in json.loads({data!r}):
    try:
        print(json.dumps([True, str(eval(compile(e, "<answer>", "eval"), {{"__builtins__": {{}}}}))]))
    except BaseException as x:
        print(json.dumps([False, type(x).__name__ + ": " + str(x)]))
"""
BATCH = 256  # expressions per sandboxed program


def evaluate_expressions(expressions: list[str]) -> list[tuple[bool, str]]:
    """Evaluate Python expressions in the shared sandbox: (True, str(value)) or (False, error).

    Batched, one program per BATCH expressions run in parallel; a batch that does not finish (time,
    memory, output, or a sandbox error) is re-run one expression per program, so one bad answer
    cannot sink the others.
    An infrastructure failure raises: it is never scored as a wrong answer.
    """
    box = shared()
    batches = [expressions[i:i + BATCH] for i in range(0, len(expressions), BATCH)]
    out: list[tuple[bool, str]] = []
    for batch, r in zip(batches, box.map([_EVAL_BATCH.format(data=json.dumps(b)) for b in batches])):
        lines = r.stdout.splitlines()
        if r.verdict == "pass" and len(lines) == len(batch):
            out += [tuple(json.loads(line)) for line in lines]
            continue
        for one in box.map([_EVAL_BATCH.format(data=json.dumps([e])) for e in batch]):
            if one.verdict == "sandbox_error":
                raise SandboxUnavailable(f"the sandbox failed ({one.detail}); no answer was scored")
            out.append(tuple(json.loads(one.stdout)) if one.verdict == "pass" else (False, f"{one.verdict}: {one.detail}"))
    return out


if __name__ == "__main__":  # python -m evolvelm.sandbox: print what this machine offers
    print(json.dumps(describe(), indent=1))
