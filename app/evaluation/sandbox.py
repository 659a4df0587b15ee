"""Run solver-library code answers in isolated processes and return the model they build.

Processes (one per answer):

    caller (pool worker) --pipe--> server --fork/clone--> runner (the answer's code)

The *server* is a fresh interpreter (`python -I`, a minimal environment, its own temporary
directory, no inherited descriptors) that imports one solver library once (capture.preload;
a caller keeps one server per library its answers import, started on the first such answer:
a smaller server is cheaper to fork and its runners cheaper to tear down) and never sees a
reference, a score or another process's memory. For each
answer it forks a *runner* (at level 'namespaces' straight into its new namespaces, one
clone), which builds its world and waits for the code; two are kept prepared, new ones are
forked while the caller solves the last model, so an answer pays for neither an interpreter
start nor a library import nor a fork. The server feeds the code, enforces the deadline and
the output cap, replies, and kills the runner's process group (or PID namespace).

Isolation levels (`evaluation.sandbox`):
- 'namespaces': the runner is forked into new mount, network, PID, IPC and UTS namespaces
  (inside a user namespace when not root); it is PID 1 of the new PID namespace (killing it
  kills everything it started, setsid or not), gets a new root holding only the system
  directories and the Python installation (read-only, nosuid, nodev), a size-limited tmpfs at /answer as the only writable place and working
  directory, a private /proc, the device nodes null/zero/full/random/urandom, a network
  without interfaces, and then drops every capability and sets no_new_privs.
- 'audit': no namespaces; the runner gets its own process group and a private working
  directory, and a Python audit hook refuses opening files outside what the 'namespaces' root
  shows (and the work directory; writes only there), deletes and renames, sockets,
  subprocesses, fork/exec, signals to other processes and ctypes.
Both: the server's pids cgroup where the kernel offers one (a fork bomb stops at the count),
resource limits (address space, CPU seconds, file size, open files, processes, no core
dumps), a wall-clock deadline, capped stdout/stderr (discarded), a scrubbed environment.

Messages are length-prefixed JSON: nothing the answer writes is ever unpickled.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import gc
import json
import math
import os
import platform
import re
import resource
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import asdict

from solver_ppo.errors import UserError
from solver_ppo.evaluation.capture import CaptureOutcome
from solver_ppo.evaluation.config import CodeLimits, SolverLimits

LEVELS = ("strict", "auto", "audit")  # settings of evaluation.sandbox
_MAX_RESULT_BYTES = 64 << 20  # the runner's JSON result (the model text) is cut off past this
_PACKAGE = __name__.split(".")[0]  # "solver_ppo"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # app/ in a checkout
# A fresh interpreter (`-I`: no environment, no script folder on sys.path) imports this very package
# directory under this process's name, whether it is installed, editable or neither.
_IMPORT_PACKAGE = ("import importlib.util, sys; "
                   f"spec = importlib.util.spec_from_file_location({_PACKAGE!r}, {os.path.join(_PACKAGE_DIR, '__init__.py')!r}, "
                   f"submodule_search_locations=[{_PACKAGE_DIR!r}]); "
                   f"package = importlib.util.module_from_spec(spec); sys.modules[{_PACKAGE!r}] = package; "
                   "spec.loader.exec_module(package); ")


class SandboxUnavailable(UserError):
    """evaluation.sandbox: strict, and this machine cannot create the namespaces."""


def _strict_message(problem: str) -> str:
    return (f"evaluation.sandbox=strict, but this machine cannot create the sandbox's namespaces ({problem}); run "
            "as root or where unprivileged user namespaces are allowed, or set evaluation.sandbox=auto")


def check_level(level: str) -> None:
    """Refuse a setting that cannot run here: an unknown level, or 'strict' without namespaces
    (probed in a fresh interpreter, so a caller holding threads or a GPU is never forked)."""
    if level not in LEVELS:
        raise UserError(f"evaluation.sandbox='{level}' is not one of {', '.join(LEVELS)}")
    if level != "strict":
        return
    problem = probe_namespaces()
    if problem:
        raise SandboxUnavailable(_strict_message(problem))


def probe_namespaces(user_namespace: bool | None = None) -> str | None:
    """namespaces_unavailable, asked of a fresh interpreter (never a fork of this process)."""
    probe = (_IMPORT_PACKAGE + f"from {_PACKAGE}.evaluation.sandbox import namespaces_unavailable; print(namespaces_unavailable({user_namespace}) or '')")
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, env=_CLEAN_ENV, timeout=60)
    return done.stdout.strip() or (None if done.returncode == 0 else f"probe failed: {done.stderr.strip()[-200:]}")


# ----------------------------------------------------------------------------- framing


def _write_frame(fd: int, obj) -> None:
    data = json.dumps(obj).encode()
    _write_all(fd, struct.pack("<I", len(data)) + data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read_frame(fd: int):
    head = _read_exact(fd, 4)
    if head is None:
        return None
    body = _read_exact(fd, struct.unpack("<I", head)[0])
    return None if body is None else json.loads(body)


# ----------------------------------------------------------------------------- kernel calls

_libc = ctypes.CDLL(None, use_errno=True)
_libc_gil = ctypes.PyDLL(None, use_errno=True)  # calls that keep the GIL: a clone must not race another thread for it
_CLONE_NEWNS, _CLONE_NEWUTS, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = \
    0x20000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
_MNT_DETACH = 2
_KEPT_MOUNT_FLAGS = _MS_NOEXEC | 1024 | 2048 | 4096  # noexec, noatime, nodiratime, relatime: statvfs and mount share the bits
_PR_SET_PDEATHSIG, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 1, 24, 38, 47, 4
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}.get(platform.machine())
_DEVICES = ("null", "zero", "full", "random", "urandom")
_WORKDIR = "/answer"  # the work directory inside the new root (not /tmp: the Python installation may live there)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _fork_into_namespaces(user_namespace: bool) -> int:
    """fork(), the child in new mount, network, PID (as its PID 1), IPC and UTS namespaces, and
    with a user namespace (how a non-root user gets them) in that too: one clone(2), so an answer
    costs one copy of the server's page tables, not two (unshare, then fork). Returns 0 in the
    child, which must then call _enter_namespaces. The server is single-threaded, so a raw clone
    is a fork; Python's own fork bookkeeping runs around it."""
    if _SYS_CLONE is None:
        raise OSError(f"clone: no system call number known for {platform.machine()}")
    flags = _NAMESPACES | (_CLONE_NEWUSER if user_namespace else 0) | signal.SIGCHLD
    ctypes.pythonapi.PyOS_BeforeFork()
    pid = _libc_gil.syscall(_SYS_CLONE, ctypes.c_ulong(flags), None, None, None, None)  # keeps the GIL across the call
    if pid == 0:
        ctypes.pythonapi.PyOS_AfterFork_Child()
        return 0
    err = ctypes.get_errno()
    ctypes.pythonapi.PyOS_AfterFork_Parent()
    if pid < 0:
        raise OSError(err, f"clone: {os.strerror(err)}")
    return pid


def _enter_namespaces(ids: tuple[int, int] | None) -> None:
    """In the child of _fork_into_namespaces: map the caller's (uid, gid) `ids` to root inside
    the user namespace (None: there is none), and stop mount events from reaching the host."""
    if ids is not None:
        uid, gid = ids
        for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
            try:
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            except FileNotFoundError:  # setgroups: kernels before 3.19
                pass
    _mount(None, "/", None, _MS_REC | _MS_PRIVATE)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(_libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    return _libc.prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0))


def _drop_capabilities() -> None:
    """No capability left in any set (a root uid then has only its file permissions), and no
    way to gain one back through execve."""
    for cap in range(64):
        _prctl(_PR_CAPBSET_DROP, cap)
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    _check(_libc.capset(header, data), "capset")
    _check(_prctl(_PR_SET_NO_NEW_PRIVS, 1), "prctl(NO_NEW_PRIVS)")


# System calls an answer never needs, refused (EPERM) at the 'namespaces' level once the runner
# has built its world: debugging and reading other processes, kernel keyrings, BPF, perf events,
# userfaultfd and io_uring (frequent kernel exploit surfaces), kernel images and modules, and
# every mount and namespace call. clone is refused with any namespace flag; clone3 passes its
# flags in memory that a filter cannot read, so it gets ENOSYS and glibc falls back to clone.
_REFUSED_SYSCALLS = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "bpf", "keyctl", "add_key", "request_key",
    "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns", "swapon", "swapoff", "reboot", "acct", "quotactl",
)
_CLONE_NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)  # NEWNS, NEWCGROUP .. NEWNET
_seccomp = None  # the pyseccomp module, loaded by a 'namespaces' server before it forks runners


def _load_seccomp():
    """pyseccomp (ctypes over the system's libseccomp.so.2), or None where either is missing."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError):
        return None
    return pyseccomp


def _refuse_syscalls(seccomp) -> None:
    rules = seccomp.SyscallFilter(seccomp.ALLOW)
    for name in _REFUSED_SYSCALLS:
        try:
            rules.add_rule(seccomp.ERRNO(errno.EPERM), name)
        except (RuntimeError, OSError, ValueError):  # not a system call of this architecture (or libseccomp version)
            pass
    for flag in _CLONE_NAMESPACE_FLAGS:
        rules.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    rules.load()


# ----------------------------------------------------------------------------- the runner's world


@functools.lru_cache(maxsize=1)
def _exposed_paths() -> list[str]:
    """What the runner's root shows (read-only): system directories and the Python installation
    this server runs from; not the caller's working directory, home or data."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc/ld.so.cache", "/etc/localtime"]
    paths += [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, _PACKAGE_DIR]
    for entry in sys.path:
        if entry and os.path.isdir(entry) and os.path.realpath(entry) != os.path.dirname(_PACKAGE_DIR):
            paths.append(entry)
    out: list[str] = []
    for p in sorted({os.path.abspath(p) for p in paths if os.path.lexists(p)}, key=len):
        if not any(p == q or p.startswith(q + "/") for q in out):  # inside one already exposed
            out.append(p)
    return out


def _build_root(root: str, work_mb: int) -> None:
    """A new root at `root` (an empty directory): tmpfs, bind mounts of the exposed paths,
    devices, the writable work dir; then pivot into it and detach the old root.
    Runs in a fresh mount namespace, as PID 1 of a fresh PID namespace."""
    _mount("sandbox", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    for path in _exposed_paths():
        target = root + path
        if os.path.islink(path):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.symlink(os.readlink(path), target)
            continue
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        _mount(path, target, None, _MS_BIND | _MS_REC)
    os.makedirs(root + "/dev")
    for name in _DEVICES:
        target = f"{root}/dev/{name}"
        open(target, "w").close()
        _mount(f"/dev/{name}", target, None, _MS_BIND)
    os.makedirs(root + _WORKDIR)
    _mount("work", root + _WORKDIR, "tmpfs", _MS_NOSUID | _MS_NODEV, f"size={work_mb}m,mode=1777")
    os.makedirs(root + "/proc")
    try:
        _mount("proc", root + "/proc", "proc", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    except OSError:  # in a user namespace the kernel refuses it where the host's /proc is partly covered
        os.rmdir(root + "/proc")
    for target in _mount_points(root + "/"):  # every bind and what it carried along (MS_REC)
        if target in (root + _WORKDIR, root + "/proc"):
            continue
        flags = os.statvfs(target).f_flag & _KEPT_MOUNT_FLAGS  # a user namespace may not change these
        if not target.startswith(root + "/dev/"):
            flags |= _MS_NODEV
        _mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | flags)
    _mount(None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
    os.chdir(root)
    if _SYS_PIVOT_ROOT is not None:
        _check(_libc.syscall(_SYS_PIVOT_ROOT, b".", b"."), "pivot_root")  # old root now stacked under "/"
        _check(_libc.umount2(b".", _MNT_DETACH), "umount old root")
    os.chroot(".")
    os.chdir(_WORKDIR)


def _mount_points(prefix: str) -> list[str]:
    """Mount points of this mount namespace under `prefix` (mountinfo escapes blanks as octal)."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), p) for p in points]
    return [p for p in points if p.startswith(prefix)]


def _set_limits(limits: CodeLimits, cpu: bool, processes: bool) -> None:
    """processes: also RLIMIT_NPROC, which counts every process of the uid (in its user
    namespace): meant for the 'namespaces' level, where those are the answer's alone."""
    pairs = [
        (resource.RLIMIT_AS, limits.memory_mb << 20),
        (resource.RLIMIT_FSIZE, limits.file_mb << 20),
        (resource.RLIMIT_NOFILE, limits.open_files),
        (resource.RLIMIT_CORE, 0),
    ]
    if processes:
        pairs.append((resource.RLIMIT_NPROC, limits.processes))
    if cpu:
        pairs.append((resource.RLIMIT_CPU, math.ceil(limits.wall_s) + 1))
    for kind, value in pairs:
        resource.setrlimit(kind, (value, value))


def _audit_hook(workdir: str):
    """The 'audit' level's guard, installed in the runner just before the answer's code runs."""
    work = os.path.realpath(workdir)
    own_proc = (f"/proc/{os.getpid()}/", "/proc/self/", "/proc/thread-self/")
    readable = tuple(os.path.realpath(p) for p in _exposed_paths()) + tuple(f"/dev/{name}" for name in _DEVICES)
    blocked_prefixes = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "ctypes.", "pty.", "_posixsubprocess")
    blocked = {"os.system", "os.fork", "os.forkpty", "os.kill", "os.killpg", "os.startfile", "signal.pthread_kill",
               "os.remove", "os.rmdir", "os.rename", "os.link", "os.symlink", "os.truncate", "os.chmod", "os.chown",
               "os.mkdir", "os.utime", "os.chroot", "shutil.rmtree", "os.setxattr", "os.removexattr", "mmap.__new__"}

    def inside(path, places=(work,)) -> bool:
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        full = os.path.realpath(path if os.path.isabs(path) else os.path.join(os.getcwd(), path))
        return any(full == p or full.startswith(p.rstrip("/") + "/") for p in places)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return
            writes = (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND)) if flags and flags > 0 \
                else any(c in (mode or "") for c in "wax+")
            if writes and not inside(path):
                raise PermissionError(f"sandbox: writing {os.fsdecode(path)} outside the work directory is not allowed")
            if not inside(path, (work, *readable, *own_proc)):
                raise PermissionError(f"sandbox: reading {os.fsdecode(path)} is not allowed (only the Python installation, "
                                      "system directories and the work directory are)")
        elif event in blocked or event.startswith(blocked_prefixes):
            if event in ("os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.utime", "os.chmod") and args and inside(args[0]):
                return
            if event == "os.rename" and inside(args[0]) and inside(args[1]):
                return
            if event in ("os.kill", "os.killpg") and args and args[0] == os.getpid():
                return
            raise PermissionError(f"sandbox: {event} is not allowed")

    return hook


def _runner(level: str, limits: CodeLimits, solver_limits: SolverLimits, root: str, workdir: str, ids: tuple[int, int] | None,
            code_fd: int, result_fd: int, out_fd: int) -> None:
    """The answer's process: enter its world, wait for the code (a length-prefixed frame), run it
    until its solve call, write the CaptureOutcome as JSON, exit. Never returns.
    ids: (uid, gid) outside, when the namespaces include a user namespace."""
    reporter = os.getpid()  # processes the code forks end here too, but only the runner reports
    try:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        try:  # the kernel's first choice when memory runs out (inherited by its forks)
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("1000")
        except OSError:  # no /proc: the memory limits still hold
            pass
        os.setsid()  # its own session and process group: a kill(0) from the answer reaches nothing else
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        keep = {0, 1, 2, code_fd, result_fd}
        for fd in _open_fds():  # the server's pipes, and those of the other prepared runners
            if fd not in keep:
                os.closerange(fd, fd + 1)
        if level == "namespaces":
            _enter_namespaces(ids)
            _build_root(root, limits.file_mb)
            workdir = _WORKDIR
            _drop_capabilities()
            if _seccomp is not None:
                _refuse_syscalls(_seccomp)
        os.chdir(workdir)
        os.environ["HOME"] = os.environ["TMPDIR"] = workdir  # libraries' temporary files go there too
        tempfile.tempdir = None
        _set_limits(limits, cpu=False, processes=level == "namespaces")
        head = _read_exact(code_fd, 4)
        raw = _read_exact(code_fd, struct.unpack("<I", head)[0]) if head else None
        if raw is None:  # the server shut down
            os._exit(0)
        os.close(code_fd)
        code = raw.decode("utf-8", errors="replace")
        _set_limits(limits, cpu=True, processes=level == "namespaces")
        from solver_ppo.evaluation.capture import run_captured

        if level == "audit":
            sys.addaudithook(_audit_hook(workdir))
        outcome = run_captured(code, workdir, solver_limits)
        payload = json.dumps(asdict(outcome)).encode()
    except BaseException as err:  # noqa: BLE001 - whatever happened is reported, never raised
        payload = _error_payload(err)
    try:
        if os.getpid() == reporter:
            _write_all(result_fd, payload)
        os.close(result_fd)  # the server replies now, before this process's exit has torn down its memory
    finally:
        os._exit(0)


def _error_payload(err: BaseException) -> bytes:
    status = "memory" if isinstance(err, MemoryError) else "sandbox_error"
    try:
        return json.dumps({"status": status, "reason": f"{type(err).__name__}: {err}"[:300]}).encode()
    except BaseException:  # noqa: BLE001 - e.g. out of memory again
        return b'{"status": "memory", "reason": "out of memory"}'


def _open_fds() -> list[int]:
    try:
        return [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


# ----------------------------------------------------------------------------- the server's side of a runner


class _Spare:
    """A prepared runner: its pid, the server's ends of its pipes, its work directory ('audit')."""

    def __init__(self, pid: int, code_w: int, result_r: int, out_r: int, workdir: str | None):
        self.pid, self.code_w, self.result_r, self.out_r, self.workdir = pid, code_w, result_r, out_r, workdir

    def close(self) -> None:
        for fd in (self.code_w, self.result_r, self.out_r):
            try:
                os.close(fd)
            except OSError:  # closed already (code_w once the code is written)
                pass


def _prepare_runner(level: str, limits: CodeLimits, solver_limits: SolverLimits, base: str, user_namespace: bool,
                    number: int) -> _Spare:
    """Fork a runner, straight into its namespaces at level 'namespaces'; it builds its world and
    waits for the code."""
    workdir = None if level == "namespaces" else os.path.join(base, f"work-{number}")
    if workdir is not None:
        os.mkdir(workdir, 0o700)
    ids = (os.geteuid(), os.getegid()) if user_namespace else None
    code_r, code_w = os.pipe()
    result_r, result_w = os.pipe()
    out_r, out_w = os.pipe()
    for attempt in range(100):  # the cgroup may be full for a moment, while a fork bomb's namespace is torn down
        try:
            pid = _fork_into_namespaces(user_namespace) if level == "namespaces" else os.fork()
            break
        except BlockingIOError:  # EAGAIN, from fork or clone
            if attempt == 99:
                raise
            time.sleep(0.05)
    if pid == 0:
        _runner(level, limits, solver_limits, os.path.join(base, "root"), workdir or "", ids, code_r, result_w, out_w)
    for fd in (code_r, result_w, out_w):
        os.close(fd)
    return _Spare(pid, code_w, result_r, out_r, workdir)


def _answer(spare: _Spare, code: str, limits: CodeLimits) -> dict:
    """Hand the code to the prepared runner and supervise it; then kill its process group (or its
    PID namespace). Any failure here becomes the reply."""
    try:
        data = code.encode("utf-8", errors="replace")
        return _supervise(spare.pid, struct.pack("<I", len(data)) + data, spare.code_w, spare.result_r, spare.out_r, limits)
    except Exception as err:  # noqa: BLE001
        return {"status": "sandbox_error", "reason": f"sandbox server failed: {type(err).__name__}: {err}"[:300]}
    finally:
        _kill(spare.pid)
        spare.close()


def _kill(pid: int) -> None:
    if pid > 0:
        for target in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
            try:
                target()
            except OSError:
                pass


def _supervise(runner: int, code: bytes, code_w: int, result_r: int, out_r: int, limits: CodeLimits) -> dict:
    """Feed the code, drain output (counted, discarded) and result until the runner exits, the
    deadline passes or the output cap is hit; then kill its process group and reap it."""
    deadline = time.monotonic() + limits.wall_s
    os.set_blocking(code_w, False)  # a pipe holds 64 KiB and the code may be longer: written as it is read
    pending = memoryview(code)
    result = bytearray()
    output = 0
    cut = None  # why the runner was killed by us
    open_fds = {result_r, out_r}
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0:
            cut = "timeout"
            break
        ready, writable, _ = select.select(list(open_fds), [code_w] if pending else [], [], left)
        if writable:
            try:
                pending = pending[os.write(code_w, pending[: 1 << 16]) :]
            except BlockingIOError:
                pass
            except OSError:  # the runner is gone; its exit is reported below
                pending = pending[:0]
        for fd in ready:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                open_fds.discard(fd)
            elif fd == out_r:
                output += len(chunk)
                if output > limits.output_kb << 10:
                    cut = "output_limit"
            else:
                result += chunk
                if len(result) > _MAX_RESULT_BYTES:
                    cut = "result_too_big"
        if cut or result_r not in open_fds:
            break
    if cut is None and result:  # complete: reply now; the runner is killed and reaped afterwards
        reply = _parse_result(result, limits)
        if reply is not None:
            return reply
    _kill(runner)
    _, status = os.waitpid(runner, 0)
    if cut == "timeout":
        return {"status": "timeout", "reason": f"the code ran past the {limits.wall_s:g} s deadline and was killed"}
    if cut == "output_limit":
        return {"status": "output_limit", "reason": f"the code printed more than {limits.output_kb} KiB and was killed"}
    if cut == "result_too_big":
        return {"status": "too_large", "reason": f"the captured model is over {_MAX_RESULT_BYTES >> 20} MiB of text"}
    if os.WIFSIGNALED(status) and not result:
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals.__members__.values() else str(sig)
        if sig == signal.SIGXCPU:
            return {"status": "timeout", "reason": f"the code used more than {math.ceil(limits.wall_s) + 1} CPU seconds ({name})"}
        if sig == signal.SIGXFSZ:
            return {"status": "killed", "reason": f"the code wrote a file over {limits.file_mb} MiB ({name})"}
        return {"status": "killed", "reason": f"the code's process was killed by {name}"}
    if not result:
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        return {"status": "killed", "reason": f"the code's process exited (code {code}) before reporting a model"}
    return _parse_result(result, limits) or {"status": "sandbox_error", "reason": "the code's process reported an unreadable result"}


def _parse_result(result: bytes, limits: CodeLimits) -> dict | None:
    try:
        reply = json.loads(result.decode("utf-8"))
    except ValueError:
        return None
    if not isinstance(reply, dict) or not isinstance(reply.get("status"), str):
        return None
    if reply["status"] == "exception" and str(reply.get("reason", "")).startswith("MemoryError"):
        reply["status"] = "memory"
        reply["reason"] = f"out of memory (address-space limit {limits.memory_mb} MiB): {reply['reason']}"
    return reply


def _pids_cgroup_root() -> str | None:
    """A writable cgroup-v1 pids hierarchy, or None (then the process count is bounded by
    RLIMIT_NPROC, which the kernel does not apply to uid 0, and by the deadline)."""
    path = "/sys/fs/cgroup/pids"
    return path if os.access(os.path.join(path, "cgroup.procs"), os.W_OK) else None


# Besides the answer's processes, the server's cgroup holds the server, the prepared runners and
# answered runners not yet reaped.
_SERVER_PROCESSES = 10


def _enter_pids_cgroup(limit: int) -> str | None:
    """Move this server into a new pids cgroup of its own (its forks inherit it for free; moving
    a process costs ~10 ms, too much per answer). Stale ones of dead servers are removed."""
    root = _pids_cgroup_root()
    if root is None:
        return None
    parent = os.path.join(root, "solver-ppo-sandbox")
    try:
        os.makedirs(parent, exist_ok=True)
        for name in os.listdir(parent):
            if name.isdigit() and not os.path.exists(f"/proc/{name}"):
                _remove_cgroup(os.path.join(parent, name), root, wait_s=0.0)
        path = os.path.join(parent, str(os.getpid()))
        os.mkdir(path)
        with open(os.path.join(path, "pids.max"), "w") as f:
            f.write(str(limit + _SERVER_PROCESSES))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
        return path
    except OSError:
        return None


def _own_cgroup(controller: str) -> tuple[str, str] | None:
    """(directory of this process's cgroup for `controller`, its version "1" or "2"), when writable."""
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            where = os.path.join(f"/sys/fs/cgroup/{controller}", path.lstrip("/"))
            return (where, "1") if os.access(os.path.join(where, "cgroup.procs"), os.W_OK) else None
    for line in lines:
        if line.startswith("0::"):
            where = os.path.join("/sys/fs/cgroup", line[3:].lstrip("/"))
            try:
                enabled = controller in open(os.path.join(where, "cgroup.subtree_control")).read().split()
            except OSError:
                return None
            return (where, "2") if enabled and os.access(where, os.W_OK) else None
    return None


def _enter_memory_cgroup(limit_mb: int) -> tuple[str, str] | None:
    """Move this server into a new memory cgroup below its own, limited to `limit_mb` for itself
    and every runner (a memory bomb spread over many processes is stopped there; the kernel's OOM
    killer then takes a runner first: oom_score_adj 1000). Returns (path, parent) or None."""
    own = _own_cgroup("memory")
    if own is None:
        return None
    parent, version = own
    try:
        for name in os.listdir(parent):
            if name.startswith("solver-ppo-sandbox-") and not os.path.exists(f"/proc/{name.rsplit('-', 1)[1]}"):
                _remove_cgroup(os.path.join(parent, name), parent, wait_s=0.0, leave=False)
        path = os.path.join(parent, f"solver-ppo-sandbox-{os.getpid()}")
        os.mkdir(path)
    except OSError:
        return None
    memory, swap = ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes") if version == "1" else ("memory.max", "memory.swap.max")
    try:
        with open(os.path.join(path, memory), "w") as f:
            f.write(str(limit_mb << 20))
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    except OSError:
        _remove_cgroup(path, parent, wait_s=0.0, leave=False)
        return None
    try:  # swap must not stretch the limit (absent where the kernel does not account swap)
        with open(os.path.join(path, swap), "w") as f:
            f.write(str(limit_mb << 20) if version == "1" else "0")
    except OSError:
        pass
    return path, parent


def _remove_cgroup(path: str, root: str, wait_s: float, leave: bool = True) -> None:
    """Leave the cgroup (when in it) and remove it once empty: a PID namespace keeps its cgroup
    busy for up to about a second after its last process was reaped (the kernel frees the
    namespace's network asynchronously)."""
    try:
        if leave:
            with open(os.path.join(root, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
    except OSError:
        pass
    end = time.monotonic() + wait_s
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() >= end:
                return
            time.sleep(0.05)


def _remove_tree(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- the server


def namespaces_unavailable(user_namespace: bool | None = None) -> str | None:
    """Why this process cannot build the 'namespaces' sandbox (None: it can), tried in a fork.
    user_namespace None: only when not root."""
    if user_namespace is None:
        user_namespace = os.geteuid() != 0
    r, w = os.pipe()
    probe = tempfile.mkdtemp()  # made outside: in a user namespace the directory would belong to nobody
    ids = os.geteuid(), os.getegid()  # inside, before the mapping, they read as the overflow id
    try:
        pid = _fork_into_namespaces(user_namespace)
    except OSError as err:
        os.close(r)
        os.close(w)
        os.rmdir(probe)
        return str(err)[:200]
    if pid == 0:
        os.close(r)
        try:
            _enter_namespaces(ids if user_namespace else None)
            _mount("probe", probe, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m")
            _libc.umount2(probe.encode(), _MNT_DETACH)
            message = b""
        except BaseException as err:  # noqa: BLE001
            message = str(err).encode()[:200] or b"failed"
        os.write(w, message)
        os._exit(0)
    os.close(w)
    message = os.read(r, 400)
    os.close(r)
    os.waitpid(pid, 0)
    os.rmdir(probe)
    return message.decode() or None


# One tiny model per library, captured once in its server so that every runner forked from it
# finds the libraries' lazily initialised state (and their code pages) already in place.
_WARM_UP = {
    "pyscipopt": "import pyscipopt\nm = pyscipopt.Model()\nx = m.addVar('x', ub=1)\nm.addCons(x <= 1)\nm.setObjective(x, 'maximize')\nm.optimize()",
    "gurobipy": "import gurobipy as gp\nm = gp.Model()\nx = m.addVar(ub=1, name='x')\nm.addConstr(x <= 1)\nm.setObjective(x, gp.GRB.MAXIMIZE)\nm.optimize()",
    "coptpy": "import coptpy as cp\nm = cp.Envr().createModel('m')\nx = m.addVar(ub=1, name='x')\nm.addConstr(x <= 1)\nm.setObjective(x, cp.COPT.MAXIMIZE)\nm.solve()",
    "pulp": "import pulp\np = pulp.LpProblem('m', pulp.LpMaximize)\nx = pulp.LpVariable('x', 0, 1)\np += x\np += x <= 1\np.solve()",
    "pyomo": "import pyomo.environ as pyo\nm = pyo.ConcreteModel()\nm.x = pyo.Var(bounds=(0, 1))\nm.c = pyo.Constraint(expr=m.x <= 1)\nm.o = pyo.Objective(expr=m.x, sense=pyo.maximize)\npyo.SolverFactory('glpk').solve(m)",
    "scipy": "from scipy.optimize import linprog\nlinprog([-1], A_ub=[[1]], b_ub=[1], bounds=[(0, 1)])",
}


def _warm_up(base: str, library: str | None) -> None:
    from solver_ppo.evaluation.capture import installed, run_captured

    if library in _WARM_UP and installed(library):
        workdir = tempfile.mkdtemp(dir=base)
        run_captured(_WARM_UP[library], workdir)
        _remove_tree(workdir)


# Runners kept prepared: while one answer runs, the next is ready and the one after it is
# being prepared, so back-to-back answers do not wait for a fork.
_PREPARED = 2


def serve(settings: dict) -> None:
    """The server's loop: hello, then one request (code) -> one reply (outcome) at a time, on
    stdin/stdout; ends at end of input."""
    stdin, stdout = 0, os.dup(1)
    os.dup2(os.open("/dev/null", os.O_WRONLY), 1)  # stray prints of the libraries must not corrupt the replies
    limits = CodeLimits(**settings["limits"])
    solver_limits = SolverLimits(**settings["solver_limits"])
    wanted = settings["level"]
    user_namespace = os.geteuid() != 0 if settings["user_namespace"] is None else settings["user_namespace"]
    problem = namespaces_unavailable(user_namespace) if wanted in ("strict", "auto") else "not asked for (evaluation.sandbox: audit)"
    level = "namespaces" if problem is None else "audit"
    from solver_ppo.evaluation.capture import preload

    preload(settings["library"])
    global _seccomp
    _seccomp = _load_seccomp() if level == "namespaces" else None
    base = tempfile.mkdtemp(prefix="solver-ppo-sandbox-")
    _warm_up(base, settings["library"])
    _exposed_paths()  # computed once here, inherited by every runner
    gc.freeze()  # the runners' garbage collections then leave the server's objects (and their pages) alone
    os.makedirs(os.path.join(base, "root"))
    _write_frame(stdout, {"level": level, "problem": problem, "seccomp": _seccomp is not None})
    if wanted == "strict" and level != "namespaces":
        return
    spares: deque[_Spare] = deque()  # prepared runners, oldest first
    retired: list[_Spare] = []  # runners that answered and were killed, to reap
    cgroup = _enter_pids_cgroup(limits.processes)
    memory = _enter_memory_cgroup(limits.total_memory_mb)
    prepared = 0
    try:
        while True:
            while len(spares) < _PREPARED and not (spares and _waiting(stdin, 0.0)):  # a waiting answer goes first
                prepared += 1
                spares.append(_prepare_runner(level, limits, solver_limits, base, user_namespace, prepared))
            while retired and not _waiting(stdin, 0.1):  # reap finished runners while idle
                _reap(retired)
            request = _read_frame(stdin)
            if request is None:
                break
            spare = spares.popleft()
            _write_frame(stdout, _answer(spare, request["code"], limits))
            retired.append(spare)
            _reap(retired)
    finally:
        for spare in spares:
            _kill(spare.pid)
            spare.close()
            retired.append(spare)
        while retired:
            _reap(retired, block=True)
        if cgroup is not None:
            _remove_cgroup(cgroup, _pids_cgroup_root(), wait_s=3.0)
        if memory is not None:
            _remove_cgroup(*memory, wait_s=3.0)
        _remove_tree(settings["home"])  # holds `base`; the client made it for this server alone


def _waiting(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def _reap(retired: list[_Spare], block: bool = False) -> None:
    """Reap the runners that have exited (removed from `retired`) and remove their work directories."""
    for spare in list(retired):
        try:
            done = os.waitpid(spare.pid, 0 if block else os.WNOHANG)[0] == spare.pid
        except ChildProcessError:  # reaped already, by the supervision of a runner that failed
            done = True
        if done:
            retired.remove(spare)
            if spare.workdir is not None:
                _remove_tree(spare.workdir)


# ----------------------------------------------------------------------------- the caller's side

_CLEAN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
              "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
_START_TIMEOUT_S = 120.0  # importing a solver library on a busy machine
_warned = False


class Sandbox:
    """A sandbox server for this process: `run(code)` -> CaptureOutcome. The server starts on the
    first call and again after it died; a failure becomes an outcome, never an exception (except
    SandboxUnavailable at level 'strict')."""

    def __init__(self, level: str = "auto", limits: CodeLimits | None = None, solver_limits: SolverLimits | None = None,
                 user_namespace: bool | None = None, library: str | None = None):
        """user_namespace: build the namespaces inside a user namespace (None: only when not root).
        library: the solver library the server imports before forking runners (capture.SUPPORTED;
        None: none, and code importing one imports it in its runner)."""
        if level not in LEVELS:
            raise ValueError(f"evaluation.sandbox={level!r} is not one of {', '.join(LEVELS)}")
        self.level_setting = level
        self.limits = limits or CodeLimits()
        self.solver_limits = solver_limits or SolverLimits()
        self.level: str | None = None  # 'namespaces' | 'audit' once the server runs
        self.seccomp = False  # whether its runners get the system-call filter (namespaces level, pyseccomp and libseccomp present)
        self._process: subprocess.Popen | None = None
        self._home: str | None = None  # the server's HOME and TMPDIR
        self._lock = threading.Lock()
        self.restarts = 0
        self.user_namespace = user_namespace
        self.library = library

    def _start(self) -> None:
        global _warned
        home = self._home = tempfile.mkdtemp(prefix="solver-ppo-sandbox-home-")
        settings = {"level": self.level_setting, "limits": asdict(self.limits), "solver_limits": asdict(self.solver_limits),
                    "user_namespace": self.user_namespace, "home": home,
                    "library": self.library}
        bootstrap = _IMPORT_PACKAGE + f"import json; from {_PACKAGE}.evaluation.sandbox import serve; serve(json.loads(sys.argv[1]))"
        env = {**_CLEAN_ENV, "HOME": home, "TMPDIR": home}
        self._process = subprocess.Popen([sys.executable, "-I", "-c", bootstrap, json.dumps(settings)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, cwd=home, close_fds=True,
                                         start_new_session=True)
        ready, _, _ = select.select([self._process.stdout], [], [], _START_TIMEOUT_S)
        try:
            hello = _read_frame(self._process.stdout.fileno()) if ready else None
        except ValueError:  # not JSON
            hello = None
        if not isinstance(hello, dict) or not isinstance(hello.get("level"), str):
            self._stop(kill=True)
            raise OSError("the sandbox server did not start")
        self.level = hello["level"]
        self.seccomp = bool(hello.get("seccomp"))
        if self.level_setting == "strict" and self.level != "namespaces":
            self._stop()
            raise SandboxUnavailable(_strict_message(hello["problem"]))
        if self.level == "audit" and self.level_setting == "auto" and not _warned:
            _warned = True
            print(f"sandbox: namespaces unavailable ({hello['problem']}); code answers run with resource limits and "
                  "an audit hook only", file=sys.stderr)

    def run(self, code: str) -> CaptureOutcome:
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self.restarts += 1
                self._stop()
            if self._process is None:
                try:
                    self._start()
                except OSError as err:
                    return CaptureOutcome("sandbox_error", f"{err}; it is tried again for the next answer")
            reply = None
            try:
                _write_frame(self._process.stdin.fileno(), {"code": code})
                ready, _, _ = select.select([self._process.stdout], [], [], self.limits.wall_s + 20.0)
                if ready:
                    reply = _read_frame(self._process.stdout.fileno())
            except (OSError, ValueError):  # ValueError: a reply that is not JSON
                reply = None
            if reply is None:  # dead or hung: the next call starts a fresh server
                self._stop(kill=True)
                return CaptureOutcome("sandbox_error", "the sandbox server failed; it is restarted for the next answer")
            return _outcome(reply)

    def _stop(self, kill: bool = False) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if kill:
            _kill(process.pid)
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            process.wait(timeout=0.0 if kill else 5.0)
        except subprocess.TimeoutExpired:
            _kill(process.pid)
            process.wait()
        _remove_tree(self._home)

    def close(self) -> None:
        with self._lock:
            self._stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _outcome(reply) -> CaptureOutcome:
    if not isinstance(reply, dict):
        return CaptureOutcome("sandbox_error", f"the sandbox replied with a JSON {type(reply).__name__}, not an object")
    fields = {k: reply.get(k) for k in ("status", "reason", "model_text", "fmt", "library")}
    fields["sense_free"] = bool(reply.get("sense_free", False))
    if not isinstance(fields["status"], str):
        return CaptureOutcome("sandbox_error", "the sandbox returned no status")
    for key in ("reason", "model_text", "fmt", "library"):
        if fields[key] is not None and not isinstance(fields[key], str):
            fields[key] = None
    line = reply.get("line")
    fields["line"] = line if isinstance(line, int) and not isinstance(line, bool) else None
    return CaptureOutcome(**fields)


_sandboxes: dict[tuple, Sandbox] = {}


def sandbox_for(level: str, limits: CodeLimits, solver_limits: SolverLimits, library: str | None) -> Sandbox:
    """This process's sandbox for these settings and this solver library (one server each)."""
    key = (level, tuple(asdict(limits).items()), tuple(asdict(solver_limits).items()), library, os.getpid())
    box = _sandboxes.get(key)
    if box is None:
        box = _sandboxes[key] = Sandbox(level, limits, solver_limits, library=library)
    return box


def close_all() -> None:
    for box in _sandboxes.values():
        box.close()
    _sandboxes.clear()
