"""The code-answer sandbox against hostile answers, at both isolation levels, through the real
pool, server, solver libraries and SCIP: every answer ends with a row and a reason, the host is
untouched and the pool keeps working."""

import os
import socket
import time

import pytest

from solver_ppo.errors import UserError
from solver_ppo.evaluation import EvaluationConfig, EvaluatorPool, Reference, score_answer
from solver_ppo.evaluation.config import CodeLimits
from solver_ppo.evaluation.sandbox import _PREPARED as PREPARED
from solver_ppo.evaluation.sandbox import Sandbox, check_level, probe_namespaces

SECRET = "solverPpoSecret7431"
HAVE_NAMESPACES = probe_namespaces() is None
LEVELS = [pytest.param("auto", marks=pytest.mark.skipif(not HAVE_NAMESPACES, reason="no namespaces here")), "audit"]

# One small model, written for pulp; its optimum is 21 (x = 7, y = 0).
MODEL = """
import pulp
prob = pulp.LpProblem("m", pulp.LpMaximize)
x = pulp.LpVariable("x", 0, 10, cat="Integer")
y = pulp.LpVariable("y", 0, 4)
prob += 3 * x + 2 * y
prob += x + 2 * y <= 7
prob.solve()
print(pulp.value(prob.objective))
"""


def fenced(code: str) -> str:
    return f"Here is the model.\n```python\n{code.strip()}\n```\n"


def hostile(victim: str, marker: str, port: int) -> dict[str, tuple[str, set[str]]]:
    """name -> (code, statuses allowed at 'namespaces' | 'audit', as 'ns:x' / 'audit:x' / 'x' for both)."""
    return {
        "infinite loop": ("import pulp\nwhile True:\n    pass", {"timeout"}),
        "SIGTERM ignored": ("import pulp, signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass", {"timeout"}),
        "fork bomb": ("import os, pulp\nwhile True:\n    os.fork()", {"ns:exception", "ns:timeout", "audit:exception"}),
        "memory bomb": ("import pulp\nblocks = [bytearray(64 << 20)]\nbig = [0] * 10**10", {"memory"}),
        "write outside": (f"import pulp\nopen({victim!r}, 'w').write('owned')\n{MODEL}", {"exception"}),
        "delete outside": (f"import os, pulp\nos.remove({victim!r})\n{MODEL}", {"exception"}),
        "subprocess": (f"import subprocess, pulp\nsubprocess.run(['touch', {marker!r}], check=True)\n{MODEL}",
                       {"ns:exception", "audit:exception"}),
        "tcp connection": (f"import socket, pulp\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n{MODEL}",
                           {"exception"}),
        "200 MB of output": ("import sys, pulp\nchunk = 'x' * (1 << 20)\nfor _ in range(200):\n    sys.stdout.write(chunk)",
                             {"output_limit"}),
        "os._exit before the solve": ("import os, pulp\nos._exit(3)", {"killed"}),
        # namespaces: its parent is outside its PID namespace (getppid() is 0, and the kill of its own
        # group does nothing to PID 1), so the honest model after it is scored
        "kill its parent": (f"import os, pulp\nos.kill(os.getppid(), 9)\n{MODEL}", {"ns:optimal", "audit:exception"}),
        "deep recursion": ("import pulp\ndef f(n):\n    return f(n + 1)\nf(0)", {"exception"}),
        "deep C recursion": ("import sys, pulp\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return f(n + 1)\nf(0)",
                             {"killed", "exception", "memory", "timeout"}),
        "64 spinning threads": ("import threading, pulp\ndef spin():\n    while True:\n        pass\n"
                                "for _ in range(64):\n    threading.Thread(target=spin).start()\nspin()", {"timeout"}),
        "segfault through ctypes": ("import ctypes, pulp\nctypes.string_at(0)", {"ns:killed", "audit:exception"}),
        "print without a model": ("import pulp\nprint('Optimal value: 21')", {"no_solve"}),
        "monkeypatched solve": ("import pulp\npulp.LpProblem.solve = lambda self, *a, **k: print(21)\n" + MODEL.replace("import pulp", ""),
                                {"no_solve"}),
        "3 million variables": ("import numpy as np\nfrom scipy.optimize import linprog\nn = 3_000_000\n"
                                "linprog(-np.ones(n), A_ub=np.ones((1, n)), b_ub=[5], bounds=(0, 1))", {"too_large"}),
        "only an import": ("import pulp", {"no_solve"}),
        "syntax error": ("import pulp\nprob = pulp.LpProblem('m'\nprob.solve()", {"syntax_error"}),
    }


def allowed(statuses: set[str], level: str) -> set[str]:
    tag = "ns" if level == "auto" else "audit"
    return {s.split(":")[-1] for s in statuses if ":" not in s or s.startswith(tag + ":")}


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


@pytest.mark.slow
@pytest.mark.parametrize("level", LEVELS)
def test_hostile_answers_end_with_a_reason_and_the_host_is_untouched(level, tmp_path, listener):
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    marker = str(tmp_path / "marker")
    cases = hostile(str(victim), marker, listener.getsockname()[1])
    config = EvaluationConfig(workers=2, sandbox=level, code=CodeLimits(wall_s=3.0))
    items = [(fenced(code), Reference(21.0)) for code, _ in cases.values()]
    items.append((fenced(MODEL), Reference(21.0)))  # an honest answer last: the pool still scores it
    items.append((b"```python\nimport pulp\nname = '\xff\xfe'\n```", Reference(21.0)))  # not UTF-8
    items.append(("```python\n```", Reference(21.0)))  # empty block
    t0 = time.monotonic()
    with EvaluatorPool(config) as pool:
        workers = [w["pid"] for w in pool.worker_info()]
        results = pool.score_many(items)
        assert [w["pid"] for w in pool.worker_info()] == workers and pool.replaced == 0  # no worker went down
    assert time.monotonic() - t0 < 120
    for (name, (_, statuses)), r in zip(cases.items(), results):
        assert r.status in allowed(statuses, level), f"{name}: {r.status} ({r.reason})"
        assert r.status == "optimal" or (r.reward == 0.0 and r.reason), name
    honest, not_utf8, empty = results[-3:]
    assert honest.status == "optimal" and honest.objective == pytest.approx(21.0) and honest.reward == 1.0
    assert not_utf8.status == "no_solve"
    assert empty.status == "no_model"
    assert victim.read_text() == "untouched" and not os.path.exists(marker)
    with pytest.raises(BlockingIOError):
        listener.accept()  # nobody connected
    assert sorted(os.listdir(tmp_path)) == ["victim.txt"]


def test_reasons_name_the_problem_and_its_line():
    config = EvaluationConfig(workers=1, code=CodeLimits(wall_s=3.0))
    cases = {
        "import pulp\nx = 1\ny = x / 0\n": ("exception", "ZeroDivisionError: division by zero (answer line 3)"),
        "import pulp\nif True\n    pass\n": ("syntax_error", "answer line 2"),
        "import pulp\nprint(21)\n": ("no_solve", "prob.solve()"),
        "import pulp\nwhile True:\n    pass\n": ("timeout", "3 s deadline"),
    }
    for code, (status, words) in cases.items():
        r = score_answer(fenced(code), Reference(21.0), config)
        assert (r.status, r.reward) == (status, 0.0) and words in r.reason and r.reason.startswith("pulp: ")


def test_the_code_never_sees_the_scorers_environment_or_files(monkeypatch, tmp_path):
    """The secret is in the scoring process's environment and in a file of its working directory;
    an answer that looks for it everywhere names its variable after what it found."""
    monkeypatch.setenv("SOLVER_PPO_TEST_SECRET", SECRET)
    (tmp_path / "reference.txt").write_text(SECRET)
    monkeypatch.chdir(tmp_path)
    snoop = f"""
import glob, os, pulp
found = os.environ.get("SOLVER_PPO_TEST_SECRET", "")
for path in glob.glob("/proc/*/environ") + glob.glob({str(tmp_path)!r} + "/*") + glob.glob("*"):
    try:
        with open(path, "rb") as f:
            if {SECRET!r}.encode() in f.read():
                found = "{SECRET}"
    except OSError:
        pass
prob = pulp.LpProblem("m", pulp.LpMaximize)
x = pulp.LpVariable("x_" + (found or "nothing"), 0, 1)
prob += x
prob.solve()
"""
    for level in (["auto"] if HAVE_NAMESPACES else []) + ["audit"]:
        with Sandbox(level, CodeLimits(wall_s=5.0)) as box:
            outcome = box.run(snoop)
        assert outcome.status == "captured", outcome.reason
        assert "x_nothing" in outcome.model_text and SECRET not in outcome.model_text, level


@pytest.mark.skipif(not HAVE_NAMESPACES, reason="no namespaces here")
def test_a_detached_daemon_is_gone_after_its_answer():
    daemon = """
import os, time, pulp
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(120)
    os._exit(0)
time.sleep(0.3)
prob = pulp.LpProblem("m", pulp.LpMaximize)
x = pulp.LpVariable("x", 0, 1)
prob += x
prob.solve()
"""
    with Sandbox("auto", CodeLimits(wall_s=5.0)) as box:
        assert box.run(daemon).status == "captured"
        server = box._process.pid
        deadline = time.monotonic() + 10
        while True:  # the answered runner is reaped in the background; then only the prepared runners are left
            left = descendants(server)
            if len(left) == PREPARED or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert len(left) == PREPARED, left  # the prepared runners; no daemon


@pytest.mark.skipif(not HAVE_NAMESPACES, reason="no namespaces here")
def test_every_mount_but_the_work_dir_is_read_only():
    survey = """
import os, pulp
for line in open("/proc/self/mounts"):
    point = line.split()[1].replace("\\\\040", " ")
    if point == "/answer" or point == "/proc" or point.startswith("/dev/"):
        continue
    try:
        open(os.path.join(point, "probe"), "w")
    except OSError:
        continue
    raise SystemError("writable: " + point)
open("/answer/probe", "w").write("the work dir is writable")
""" + MODEL
    with Sandbox("auto", CodeLimits(wall_s=5.0)) as box:
        outcome = box.run(survey)
    assert outcome.status == "captured", outcome.reason


@pytest.mark.skipif(probe_namespaces(user_namespace=True) is not None, reason="no user namespaces here")
def test_the_namespaces_level_inside_a_user_namespace(tmp_path):
    """How a non-root user gets the 'namespaces' level (forced here, as root, with uid 0 mapped to itself)."""
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        server.setblocking(False)
        with Sandbox("strict", CodeLimits(wall_s=3.0), user_namespace=True) as box:
            honest = box.run(MODEL)
            write = box.run(f"import pulp\nopen({str(victim)!r}, 'w').write('owned')")
            usr = box.run("import pulp\nopen('/usr/owned', 'w')")
            connect = box.run(f"import socket, pulp\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), timeout=1)")
            loop = box.run("import pulp\nwhile True:\n    pass")
        with pytest.raises(BlockingIOError):
            server.accept()
    assert box.level == "namespaces" and honest.status == "captured" and "OBJSENSE" in honest.model_text
    assert write.status == usr.status == connect.status == "exception"
    assert "No such file" in write.reason and "Read-only file system" in usr.reason and "unreachable" in connect.reason
    assert loop.status == "timeout"
    assert victim.read_text() == "untouched"


def descendants(pid: int) -> list[int]:
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                children.setdefault(int(fields[1]), []).append(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return sorted(out)


def test_a_crashed_server_is_restarted():
    with Sandbox("audit", CodeLimits(wall_s=5.0)) as box:
        assert box.run(MODEL).status == "captured"
        os.kill(box._process.pid, 9)
        box._process.wait()
        outcome = box.run(MODEL)
        assert outcome.status == "captured" and box.restarts == 1


def test_unknown_level_is_refused_in_one_line():
    with pytest.raises(UserError, match="evaluation.sandbox='jail' is not one of strict, auto, audit"):
        check_level("jail")
    if HAVE_NAMESPACES:
        check_level("strict")  # available here: no error


NO_NAMESPACES_SCRIPT = """
import sys
from solver_ppo.evaluation.config import CodeLimits
from solver_ppo.evaluation.sandbox import Sandbox, SandboxUnavailable, check_level
try:
    check_level("strict")
    print("strict: accepted")
except SandboxUnavailable as err:
    print("strict: refused:", err)
with Sandbox("auto", CodeLimits(wall_s=5.0), library="pulp") as box:
    outcome = box.run(sys.stdin.read())
    print("auto:", box.level, outcome.status)
"""


def test_without_namespaces_strict_refuses_and_auto_falls_back_to_audit_with_one_warning():
    """A machine that cannot create namespaces, made real: a user namespace whose limits for new
    user, mount and network namespaces are 0 (as on clusters that disable them)."""
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or subprocess.run(["unshare", "--user", "--map-root-user", "true"]).returncode:
        pytest.skip("cannot create a user namespace here")
    limits = " && ".join(f"echo 0 > /proc/sys/user/max_{kind}_namespaces" for kind in ("user", "mnt", "net", "pid"))
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c", f'{limits} && exec "$0" -c "$1"',
                           sys.executable, NO_NAMESPACES_SCRIPT], input=MODEL, capture_output=True, text=True, timeout=240,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("strict: refused: evaluation.sandbox=strict, but this machine cannot create the sandbox's namespaces")
    assert "set evaluation.sandbox=auto" in lines[0]
    assert lines[1] == "auto: audit captured"
    warnings = [line for line in done.stderr.splitlines() if line.startswith("sandbox: namespaces unavailable")]
    assert len(warnings) == 1 and warnings[0].endswith("code answers run with resource limits and an audit hook only")
