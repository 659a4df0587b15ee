"""The sandbox's kernel-side limits (system-call filter, memory cgroup, OOM score) and the
branches of the server and runner that only odd answers or a broken server reach."""

import glob
import json
import os
import platform
import signal
import stat
import sys
import textwrap

import pytest

from solver_ppo.evaluation import sandbox
from solver_ppo.evaluation.config import CodeLimits
from solver_ppo.evaluation.sandbox import Sandbox, probe_namespaces

HAVE_NAMESPACES = probe_namespaces() is None
MODEL = "import pulp\nprob = pulp.LpProblem('m', pulp.LpMaximize)\nx = pulp.LpVariable('x', 0, 10)\nprob += 3 * x\nprob += x <= 7\nprob.solve()\n"


@pytest.mark.skipif(not HAVE_NAMESPACES or platform.machine() != "x86_64", reason="namespaces on x86_64 only (system call numbers)")
def test_the_filter_refuses_what_an_answer_never_needs():
    code = textwrap.dedent("""
        import ctypes, errno, threading, pulp
        libc = ctypes.CDLL(None, use_errno=True)
        allowed = []
        for name, nr, args in [("ptrace", 101, (0, 0, 0, 0)), ("bpf", 321, (0, 0, 0)), ("keyctl", 250, (0, 0, 0, 0, 0)),
                               ("perf_event_open", 298, (0, 0, 0, 0, 0)), ("userfaultfd", 323, (0,)), ("io_uring_setup", 425, (0, 0)),
                               ("kexec_load", 246, (0, 0, 0, 0)), ("init_module", 175, (0, 0, 0)), ("mount", 165, (0, 0, 0, 0, 0)),
                               ("unshare", 272, (0x20000,)), ("setns", 308, (0, 0)), ("clone_newpid", 56, (0x20000000 | 17, 0, 0, 0, 0))]:
            if libc.syscall(nr, *args) != -1 or ctypes.get_errno() != errno.EPERM:
                allowed.append(name)
        t = threading.Thread(target=lambda: None)  # threads still start (clone3 -> ENOSYS -> clone)
        t.start()
        t.join()
        raise RuntimeError(f"not refused: {allowed}; oom_score_adj {open('/proc/self/oom_score_adj').read().strip()}")
    """)
    with Sandbox("strict", CodeLimits()) as box:
        outcome = box.run(code)
        assert box.seccomp, "pyseccomp or libseccomp.so.2 missing"
        assert box.run(MODEL).status == "captured"
    # without the filter PTRACE_TRACEME succeeds and bpf, io_uring_setup and keyctl fail with EFAULT or EINVAL
    assert outcome.reason.startswith("RuntimeError: not refused: []; oom_score_adj 1000"), outcome.reason


def test_runners_get_oom_score_adj_1000_at_the_audit_level_too():
    with Sandbox("audit", CodeLimits()) as box:
        outcome = box.run("import pulp\nraise RuntimeError(open('/proc/self/oom_score_adj').read().strip())")
    assert outcome.reason.startswith("RuntimeError: 1000")


def _memory_cgroup_here() -> bool:
    return sandbox._own_cgroup("memory") is not None


@pytest.mark.skipif(not _memory_cgroup_here(), reason="no writable memory cgroup here")
def test_a_memory_bomb_over_many_processes_stops_at_the_total():
    """Six processes of 200 MB each, under a 4 GiB address-space limit apiece, against a 512 MiB
    total: the kernel kills runners (OOM score 1000) in the server's cgroup, never the server."""
    bomb = textwrap.dedent("""
        import os, pulp
        kids = []
        for _ in range(6):
            pid = os.fork()
            if pid == 0:
                block = b"x" * (200 << 20)
                os._exit(0)
            kids.append(pid)
        for pid in kids:
            os.waitpid(pid, 0)
    """)
    level = "auto" if HAVE_NAMESPACES else "audit"  # audit refuses os.fork: then only the cgroup's life cycle is checked
    with Sandbox(level, CodeLimits(total_memory_mb=512, wall_s=10)) as box:
        box.run(MODEL)
        [cgroup] = glob.glob(f"/sys/fs/cgroup/**/solver-ppo-sandbox-{box._process.pid}", recursive=True)
        assert int(open(os.path.join(cgroup, "memory.limit_in_bytes" if "memory" in cgroup else "memory.max")).read()) == 512 << 20
        box.run(bomb)
        if level == "auto":
            oom = dict(line.split() for line in open(os.path.join(cgroup, "memory.oom_control")).read().splitlines())
            assert int(oom["oom_kill"]) >= 1
            assert int(open(os.path.join(cgroup, "memory.max_usage_in_bytes")).read()) <= 512 << 20
        assert box.run(MODEL).status == "captured"  # the server survived
    assert not os.path.exists(cgroup)  # removed when the server ends


@pytest.mark.parametrize("level", [pytest.param("auto", marks=pytest.mark.skipif(not HAVE_NAMESPACES, reason="no namespaces")), "audit"])
def test_odd_answers_reach_their_branches(level):
    with Sandbox(level, CodeLimits(file_mb=1, wall_s=4)) as box:
        # a file over file_mb: Python ignores SIGXFSZ, so the write fails (EFBIG, or ENOSPC on the full tmpfs)
        full = box.run("import pulp\nopen('big', 'wb').write(b'x' * (2 << 20))")
        assert full.status == "exception" and ("File too large" in full.reason or "No space left" in full.reason), full.reason
        # with SIGXFSZ's default action back, the kernel's signal ends it; PID 1 of a namespace takes
        # no signal with a default action from inside it, so there the write fails as above
        xfsz = box.run("import pulp, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_DFL)\nf = open('big', 'wb')\n"
                       "for _ in range(4):\n    f.write(b'x' * (1 << 19))\n    f.flush()")
        if box.level == "audit":
            assert (xfsz.status, xfsz.reason) == ("killed", "the code wrote a file over 1 MiB (SIGXFSZ)")
        else:
            assert xfsz.status == "exception" and "File too large" in xfsz.reason, xfsz.reason
        # its CPU limit lowered by itself: SIGXCPU before the wall-clock deadline (at 'audit'; PID 1 again ignores it)
        xcpu = box.run("import pulp, resource\nresource.setrlimit(resource.RLIMIT_CPU, (1, resource.getrlimit(resource.RLIMIT_CPU)[1]))\n"
                       "while True:\n    pass")
        if box.level == "audit":
            assert (xcpu.status, xcpu.reason) == ("timeout", "the code used more than 5 CPU seconds (SIGXCPU)")
        else:
            assert (xcpu.status, xcpu.reason) == ("timeout", "the code ran past the 4 s deadline and was killed")
        # a forged result: a non-JSON frame, then one over the result cap, on the runner's result pipe
        forge = ("import os, stat, pulp\nfd = next(f for f in range(3, 64) if os.path.exists(f'/proc/self/fd/{f}') and "
                 "stat.S_ISFIFO(os.fstat(f).st_mode))\n")
        garbage = box.run(forge + "os.write(fd, b'not json')\nos._exit(0)")
        assert (garbage.status, garbage.reason) == ("sandbox_error", "the code's process reported an unreadable result")
        big = box.run(forge + "block = b'x' * (1 << 20)\nfor _ in range(65):\n    os.write(fd, block)\nimport time\ntime.sleep(10)")
        assert (big.status, big.reason) == ("too_large", "the captured model is over 64 MiB of text")
        assert box.run(MODEL).status == "captured"


def test_the_audit_hook_allows_the_work_directory_and_refuses_elsewhere(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    inside = "import os, pulp\nos.mkdir('d')\nopen('d/a', 'w').write('1')\nos.rename('d/a', 'd/b')\nos.remove('d/b')\nos.rmdir('d')\n" + MODEL
    with Sandbox("audit", CodeLimits()) as box:
        assert box.run(inside).status == "captured"
        for op in (f"os.rename({str(victim)!r}, 'here')", f"os.remove({str(victim)!r})", f"os.mkdir({str(tmp_path / 'new')!r})"):
            outcome = box.run(f"import os, pulp\n{op}\n{MODEL}")
            assert outcome.status == "exception" and "sandbox: os." in outcome.reason and "is not allowed" in outcome.reason, outcome.reason
    assert victim.read_text() == "keep" and not (tmp_path / "new").exists()


def _fake_server(tmp_path, monkeypatch, behaviour: str) -> None:
    """Sandbox starts `sys.executable -I -c ...`: point it at a script that misbehaves."""
    script = tmp_path / "server.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, struct, sys, time
        def frame(obj):
            data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
            os.write(1, struct.pack("<I", len(data)) + data)
        behaviour = {behaviour!r}
        if behaviour == "exit":
            sys.exit(1)
        if behaviour == "hang":
            time.sleep(60)
        frame({{"level": "audit", "problem": "fake", "seccomp": False}})
        os.read(0, 1 << 20)
        frame(b"{{not json" if behaviour == "garbage" else [1, 2])
        os.read(0, 1)  # until the client closes the pipe
    """))
    wrapper = tmp_path / "python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {script}\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(sandbox.sys, "executable", str(wrapper))
    monkeypatch.setattr(sandbox, "_START_TIMEOUT_S", 2.0)


@pytest.mark.parametrize("behaviour, reason", [
    ("exit", "the sandbox server did not start; it is tried again for the next answer"),
    ("hang", "the sandbox server did not start; it is tried again for the next answer"),
    ("garbage", "the sandbox server failed; it is restarted for the next answer"),
    ("list", "the sandbox replied with a JSON list, not an object"),
])
def test_a_broken_server_becomes_an_outcome(tmp_path, monkeypatch, behaviour, reason):
    _fake_server(tmp_path, monkeypatch, behaviour)
    with Sandbox("audit", CodeLimits(wall_s=1)) as box:
        outcome = box.run(MODEL)
    assert (outcome.status, outcome.reason) == ("sandbox_error", reason)


def test_a_killed_sandbox_server_leaves_no_files_once_its_pool_closes():
    """A SIGKILLed server cannot remove its own directory; its worker does, when the pool closes."""
    from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference

    pool = EvaluatorPool(EvaluationConfig(workers=1))
    try:
        [result] = pool.score_many([(f"```python\n{MODEL}```", Reference(21.0))])
        assert result.status == "optimal"
        [worker] = [info["pid"] for info in pool.worker_info()]
        servers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(int(pid)) == worker
                   and b"sandbox import serve" in open(f"/proc/{pid}/cmdline", "rb").read()]
        [server] = servers
        home = json.loads(open(f"/proc/{server}/cmdline", "rb").read().split(b"\0")[-2])["home"]
        assert os.path.isdir(home)
        os.kill(server, signal.SIGKILL)
    finally:
        pool.close()
    assert not os.path.exists(home)


def _parent(pid: int) -> int:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1
