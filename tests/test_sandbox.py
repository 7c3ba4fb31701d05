"""The sandbox against hostile programs: every test asserts the verdict, that no process of the
sandbox survives, and that the host is untouched.

Needs root (the sandbox drops each slot to its own uid, which is how survivors are found) and, for
the bwrap level, bubblewrap. Where either is missing the tests skip with the reason, except under
CI=true, where a missing bubblewrap is a failure: .ci/run installs it.
"""

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from evolvelm import sandbox
from evolvelm.sandbox import Limits, Sandbox, SandboxUnavailable

if os.geteuid() != 0:
    pytest.skip("the sandbox suite runs as root (slots drop to their own uids)", allow_module_level=True)

HAVE_BWRAP = shutil.which("bwrap") is not None
if os.environ.get("CI") == "true" and not HAVE_BWRAP:
    raise RuntimeError("bubblewrap is missing on CI; .ci/run must install it")
needs_bwrap = pytest.mark.skipif(not HAVE_BWRAP, reason="bubblewrap not installed (apt-get install bubblewrap)")
LIMITS = Limits(wall_s=3.0, cpu_s=3, memory_mb=256, output_bytes=4096, processes=16)


def survivors(box: Sandbox) -> list[int]:
    """Processes of the box's slot uids, zombies included (the sandbox reaps what it started). Only
    its own: other tests (pytest-xdist workers) run sandboxes beside it, on uids of their own."""
    out = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and p.stat().st_uid in box.uids:
                out.append(int(p.name))
        except OSError:
            pass
    return out


@pytest.fixture(scope="module", params=[pytest.param("bwrap", marks=needs_bwrap), "subprocess"])
def box(request):
    return Sandbox(request.param, LIMITS, workers=2)


def run(box, code, **kw):
    r = box.run(textwrap.dedent(code), **kw)
    assert survivors(box) == [], f"processes survived {r}"
    return r


def test_trivial_program_passes(box):
    r = run(box, "print(6 * 7)", expect_stdout="42")
    assert (r.verdict, r.returncode, r.level) == ("pass", 0, box.level)
    assert run(box, "print(41)", expect_stdout="42").verdict == "fail"
    assert run(box, "raise ValueError('no')").verdict == "fail"


def test_fork_once_and_orphan(box):
    r = run(box, """
        import os, time
        if os.fork() == 0:
            os.setsid()          # leave the process group
            if os.fork() == 0:
                time.sleep(600)
            os._exit(0)
        print("parent done")
    """)
    assert r.verdict == "pass" and r.stdout.strip() == "parent done"


def test_fork_bomb(box):
    r = run(box, """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """)
    assert r.verdict == "timeout"
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork


def test_sleep_forever(box):
    r = run(box, "import time\ntime.sleep(10**6)")
    assert r.verdict == "timeout" and r.wall_s < LIMITS.wall_s + 2


def test_busy_loop_hits_cpu_limit():
    r = run(Sandbox("auto", Limits(wall_s=30, cpu_s=1), workers=1, allow_unsafe=True), "while True: pass")
    assert r.verdict == "timeout" and "CPU" in r.detail


def test_unbounded_output(box):
    r = run(box, "while True: print('x' * 1000)")
    assert r.verdict == "output_limit" and len(r.stdout) <= LIMITS.output_bytes


def test_closed_stdout_does_not_end_the_watch(box):
    r = run(box, "import os, time\nos.close(1)\nos.close(2)\ntime.sleep(10**6)")
    assert r.verdict == "timeout"


def test_stdin_is_closed(box):
    r = run(box, "import sys\nprint(len(sys.stdin.read()))", expect_stdout="0")
    assert r.verdict == "pass"
    assert run(box, "input()").verdict == "fail"  # EOFError at once, no hang


def test_memory_hog(box):
    r = run(box, "x = []\nwhile True: x.append(bytearray(10**7))")
    assert r.verdict == "memory"


def test_big_file_is_an_output_limit(box):
    r = run(box, "open('f', 'wb').write(b'x' * (64 << 20))")
    assert r.verdict == "output_limit"


def host_free_mb() -> tuple[float, float]:
    """(available memory, free disk under the temp dir), in MB, as the host sees them."""
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemAvailable"))
    return mem / 1024, shutil.disk_usage(tempfile.gettempdir()).free / 2**20


@needs_bwrap
@pytest.mark.parametrize("where", [".", "/tmp"])
@pytest.mark.parametrize("files", ["big", "small", "empty"])
def test_disk_and_tmp_fill_up_within_their_budget(where, files):
    """15 MB files (or 4 KB ones, or empty ones) written one after another into the working directory
    or /tmp: at the bwrap level both are one tmpfs of `disk_mb` (and, as root, 64 files per MB), so the
    program stops with `disk_limit` once it holds that much; the host's memory and disk, watched while
    it runs, lose no more than that."""
    box = Sandbox("bwrap", Limits(wall_s=10.0, cpu_s=10, memory_mb=256, disk_mb=48), workers=1)
    if files == "empty" and "files" in box.describe()["unbounded"]:
        pytest.skip(f"no inode budget here: {box.describe()['why_files_unbounded']}")
    size = {"big": 15 << 20, "small": 4096, "empty": 0}[files]
    before, lowest, done = host_free_mb(), [], threading.Event()

    def watch():
        while not done.is_set():
            lowest.append(host_free_mb())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run(box, f"""
            i = 0
            while True:
                with open("{where}/f%d" % i, "wb") as f:
                    f.write(b"x" * {size})
                i += 1
        """)
    finally:
        done.set()
        watcher.join()
    assert r.verdict == "disk_limit" and "48 MB or 3072 files" in r.detail
    assert before[0] - min(m for m, _ in lowest) < 48 * 1.1 + 40  # the tmpfs, plus the interpreter itself
    assert before[1] - min(d for _, d in lowest) < 5  # nothing reached the host's disk


def descendants_mb() -> float:
    """The memory of every process below this one together, in MB, as the host's /proc counts it:
    the sum of their proportional set sizes (pages shared by forked children counted once)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    below, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {p for p, pp in parent.items() if pp in frontier} - below
        below |= frontier
    kb = 0
    for pid in below:
        try:
            kb += next(int(line.split()[1]) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines() if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass  # it exited between the walk and the read
    return kb / 1024


def watching(fn):
    """fn() while, every 10 ms, the host's free memory and the memory of this process's descendants
    are sampled: (its result, the largest drop of free memory in MB, the descendants' largest total)."""
    before, lowest, most, done = host_free_mb()[0], [], [0.0], threading.Event()

    def watch():
        while not done.is_set():
            lowest.append(host_free_mb()[0])
            most.append(descendants_mb())
            time.sleep(0.01)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = fn()
    finally:
        done.set()
        watcher.join()
    return result, before - min(lowest), max(most)


HAVE_CGROUPS = sandbox.cgroup.available()[0] is not None
needs_cgroups = pytest.mark.skipif(not HAVE_CGROUPS, reason=f"no usable cgroups: {sandbox.cgroup.available()[1]}")


@needs_cgroups
@pytest.mark.parametrize("level", [pytest.param("bwrap", marks=needs_bwrap), "subprocess"])
@pytest.mark.parametrize("how", ["processes", "threads"])
def test_many_workers_touching_memory_stay_within_the_programs_budget(level, how):
    """Two dozen children (or threads), each touching 200 MB: every child is under the per-process
    address-space limit, and without a cgroup they held about 5 GB of the host together. The slot's
    cgroup holds all of them to `memory_mb`: the kernel kills inside it (verdict `memory`), its peak
    stays within the budget, and the program's processes, watched from the host while it runs, never
    hold more than 1.5x it (uncontained: about 5 GB). The host's sum is read one process at a time
    while they fork, touch and die, so it can count a page twice (once 440 MB here, with the cgroup's
    peak at 384). Threads share one address space, so its limit stops them first (MemoryError, the
    same verdict)."""
    box = Sandbox(level, Limits(wall_s=20.0, cpu_s=20, memory_mb=384, processes=64), workers=1)
    assert box.describe()["cgroup"] in ("v1", "v2") and "memory_total" not in box.describe()["unbounded"]
    code = f"""
import os, threading, time
errors = []
def touch():
    try:
        b = bytearray(200 << 20)
        for i in range(0, len(b), 4096):
            b[i] = 1
        time.sleep(2)
    except MemoryError as e:
        errors.append(e)
if {how == "processes"}:
    pids = []
    for _ in range(24):
        pid = os.fork()
        if pid == 0:
            touch()
            os._exit(0)
        pids.append(pid)
    for pid in pids:
        os.waitpid(pid, 0)
else:
    threads = [threading.Thread(target=touch) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
"""
    r, drop, most = watching(lambda: run(box, code))
    peak = box.cgroups[0].peak()
    print(f"verdict {r.verdict}; program's processes at most {most:.0f} MB; host free memory fell {drop:.0f} MB")
    assert r.verdict == "memory" and most <= 384 * 1.5 and (peak is None or peak <= 384 << 20), (r, most, peak)
    # Free memory is the whole host's: other work moves it (alone here it fell 0-470 MB, 546 once in
    # CI), so this bound is loose; uncontained, the program took about 5 GB.
    assert drop < 3 * 384, (r, drop)
    if how == "processes":
        assert "together over 384 MB" in r.detail


@needs_cgroups
def test_the_process_count_is_one_total_for_the_program_threads_included():
    box = Sandbox("bwrap" if HAVE_BWRAP else "subprocess", Limits(wall_s=10.0, cpu_s=10, processes=24), workers=1)
    r = run(box, """
        import threading, time
        started = 0
        try:
            for _ in range(200):
                threading.Thread(target=time.sleep, args=(5,), daemon=True).start()
                started += 1
        except RuntimeError:
            pass
        print(started)
    """)
    assert r.verdict == "pass" and 0 < int(r.stdout) < 24, r


@needs_cgroups
def test_slot_cgroups_are_reused_and_removed():
    box = Sandbox("subprocess", LIMITS, workers=1)
    dirs = list(box.cgroups[0].dirs.values())
    assert all(d.is_dir() and d.name == f"slot-{box.uids[0]}" for d in dirs)
    assert run(box, "print(1)").verdict == "pass" and box.cgroups[0].processes() == []
    del box
    import gc

    gc.collect()
    assert not any(d.exists() for d in dirs)


def test_auto_fails_closed_without_cgroups(monkeypatch):
    monkeypatch.setattr(sandbox.cgroup, "available", lambda: (None, "no cgroup v1 memory controller mounted"))
    with pytest.raises(SandboxUnavailable, match="cannot make here: no cgroup v1 memory controller mounted"):
        Sandbox("auto", LIMITS)
    box = Sandbox("auto", LIMITS, allow_unsafe=True)
    assert {"memory_total", "processes_total"} <= set(box.describe()["unbounded"])
    assert "no cgroup v1 memory" in box.describe()["why_unbounded"]


@pytest.fixture
def host_dir(tmp_path):
    d = tmp_path / "host"
    d.mkdir()
    return d


def test_write_outside_work_dir(box, host_dir):
    targets = [host_dir / "escape.txt", Path("/root/evolvelm-escape.txt"), Path("/etc/evolvelm-escape")]
    run(box, f"""
        for p in {[str(t) for t in targets]!r}:
            try:
                open(p, "w").write("escaped")
            except OSError:
                pass
    """)
    assert not any(t.exists() for t in targets)


def test_overwrite_system_binary(box):
    victim = Path("/usr/local/bin/evolvelm-test-true")
    shutil.copy2("/usr/bin/true", victim)
    before = hashlib.sha256(victim.read_bytes()).hexdigest()
    try:
        r = run(box, f"""
            import os
            try:
                open({str(victim)!r}, "wb").write(b"#!/bin/sh\\nexit 1\\n")
            except OSError:
                os.unlink({str(victim)!r})
        """)
        assert r.verdict == "fail"  # PermissionError or read-only file system
        assert hashlib.sha256(victim.read_bytes()).hexdigest() == before
    finally:
        victim.unlink()


def test_posix_unlink_after_the_usual_guard(box, host_dir):
    if box.level == "bwrap":
        host_dir.chmod(0o777)  # only the mount namespace protects it, not permissions
        for p in host_dir.parents:
            if p.stat().st_uid == 0 and not p.stat().st_mode & 0o001:
                p.chmod(p.stat().st_mode | 0o001)
    victim = host_dir / "victim.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    r = run(box, f"""
        import os, shutil
        os.unlink = os.remove = os.rmdir = shutil.rmtree = None  # the usual reliability guard
        import posix
        posix.unlink({str(victim)!r})
    """)
    assert r.verdict == "fail" and victim.read_text() == "keep me"


@needs_bwrap
def test_loopback_listener_is_unreachable():
    box = Sandbox("bwrap", LIMITS, workers=1)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        r = run(box, f"""
            import socket
            socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"escaped")
        """)
        assert r.verdict == "fail"
        with pytest.raises(socket.timeout):
            listener.accept()


@needs_bwrap
def test_bwrap_failure_is_a_sandbox_error(monkeypatch):
    box = Sandbox("bwrap", LIMITS, workers=1)
    monkeypatch.setattr(sandbox, "_bwrap_args", lambda *a: ["/usr/bin/bwrap", "--no-such-option"])
    r = box.run("print(1)")
    assert r.verdict == "sandbox_error" and "bwrap" in r.detail


def test_auto_fails_closed_without_bwrap(monkeypatch):
    monkeypatch.setattr(sandbox, "_bwrap", lambda: None)
    with pytest.raises(SandboxUnavailable, match="bubblewrap"):
        Sandbox("auto")
    assert Sandbox("auto", allow_unsafe=True).level == "subprocess"
    assert Sandbox("subprocess").level == "subprocess"
    with pytest.raises(ValueError, match="auto"):
        Sandbox("docker")


@needs_bwrap
@needs_cgroups
def test_auto_picks_bwrap():
    described = Sandbox("auto").describe()
    assert described["level"] == "bwrap" and described["unbounded"] == []
    assert Sandbox("subprocess").describe()["unbounded"] == ["disk_mb"]  # it says what it cannot bound


def test_pool_runs_in_parallel_slots_in_order(box):
    code = "import os, time\nt = time.time()\ntime.sleep(0.3)\nprint({}, os.getuid(), t, time.time())"
    results = [r.stdout.split() for r in box.map([code.format(i) for i in range(6)])]
    assert [int(r[0]) for r in results] == list(range(6))
    assert {int(r[1]) for r in results} == set(box.uids)  # one uid per slot
    spans = sorted((float(r[2]), float(r[3])) for r in results)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:]))  # two ran at the same time
    assert survivors(box) == []


def test_two_sandboxes_never_share_a_uid():
    a, b = Sandbox("auto", LIMITS, workers=2, allow_unsafe=True), Sandbox("auto", LIMITS, workers=2, allow_unsafe=True)
    assert len(set(a.uids) | set(b.uids)) == 4
    out = subprocess.run([sys.executable, "-c", "from evolvelm.sandbox import Sandbox; "
                          "print(*Sandbox('auto', allow_unsafe=True, workers=2).uids)"], capture_output=True, text=True)
    assert not set(map(int, out.stdout.split())) & set(a.uids + b.uids), out.stderr


def test_limits_never_raise_a_hard_limit(tmp_path):
    code = """
        import resource
        from evolvelm.sandbox import Sandbox
        resource.setrlimit(resource.RLIMIT_NOFILE, (20, 20))
        r = Sandbox("auto", allow_unsafe=True, workers=1).run(
            "import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE))")
        print(r.verdict, r.stdout.strip())
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    assert out.stdout.strip() == "pass (20, 20)", out.stderr
