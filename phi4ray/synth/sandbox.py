"""Run generated Python code and its tests in a contained child process.

    from phi4ray.synth.sandbox import run_code, run_many
    r = run_code("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5")
    r.status, r.isolation  # ('passed', 'namespaces')

Isolation levels, strongest first; `isolation="auto"` probes once per process and takes the first
that works, and every result says which ran:

- `namespaces` (root with CAP_SYS_ADMIN): util-linux `unshare` with new network, mount, pid, IPC
  and UTS namespaces; every mount read-only except a private size-capped /tmp; `hide_paths`
  covered (the Python installation bound back); the code runs as a fresh per-run uid.
- `userns` (non-root, or root without CAP_SYS_ADMIN): the same inside a user namespace, the code
  root there without any capability.
- `uid` (root without namespaces): a per-run uid and a private directory; no network isolation.
- `none` (non-root without namespaces): rlimits and a subreaper; the code runs as the caller.

All levels: rlimits (address space, CPU time, processes, file size, open files, no core files), a
scrubbed environment, capped stdout/stderr, a wall-clock timeout, and an audit hook that blocks
and reports naive escapes (sockets, signals outside the code's own tree, writes outside its
directories). docs/sandbox.md has the statuses, the limits, the levels in detail and what the
sandbox does not protect against.
"""

from __future__ import annotations

import builtins
import ctypes
import dataclasses
import errno
import inspect
import json
import linecache
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field, ValidationError

from phi4ray.config import Strict

STATUSES = ("passed", "failed", "timeout", "memory", "output_limit", "forbidden", "error")
LEVELS = ("namespaces", "userns", "uid", "none")
Isolation = Literal["auto", "namespaces", "userns", "uid", "none"]

# Per-run uids are drawn from here: unused by any distribution, below 2**31 for tools that keep
# uids in a signed int, and wide enough that concurrent runs on one node practically never share one.
UID_RANGE = (1_000_000_000, 2_000_000_000)


class SandboxConfig(Strict):
    """Limits and isolation of one sandboxed run. Memory, CPU time and file size are per process."""

    timeout_s: float = Field(10.0, gt=0)
    """Wall clock from the start of the code to the end of its tests."""
    cpu_s: float | None = Field(None, gt=0)
    """CPU seconds per process (RLIMIT_CPU); None: timeout_s."""
    memory_mb: int = Field(256, ge=32)
    """Address space per process (RLIMIT_AS)."""
    max_processes: int = Field(32, ge=1)
    """Processes and threads of the sandbox uid (RLIMIT_NPROC)."""
    max_file_mb: int = Field(16, ge=1)
    """Largest file the code may write (RLIMIT_FSIZE)."""
    max_output_bytes: int = Field(65536, ge=256)
    """Bytes kept of stdout and of stderr each; more on either stops the run (`output_limit`)."""
    max_open_files: int = Field(256, ge=16)
    tmpfs_mb: int = Field(64, ge=1)
    """Size of the private /tmp (namespace levels)."""
    isolation: Isolation = "auto"
    hide_paths: list[str] = Field(default_factory=lambda: ["/root", "/home", "/run", "/var/run", "/mnt", "/media", "/srv"])
    """Covered by empty read-only tmpfs (namespace levels); the Python installation is bound back."""
    env: dict[str, str] = Field(default_factory=dict)
    """Extra environment variables for the code; nothing else of the caller's environment passes."""
    nice: int = Field(0, ge=0, le=19)
    python: str | None = None
    """Interpreter that runs the code; None: the caller's (sys.executable)."""


@dataclasses.dataclass
class SandboxResult:
    status: str
    reason: str
    stdout: str = ""
    stderr: str = ""
    exit_code: int | None = None
    signal: str | None = None
    wall_s: float = 0.0
    cpu_s: float = 0.0
    max_rss_mb: float = 0.0
    isolation: str = ""
    sandbox_uid: int | None = None
    tests_run: int = 0
    tests_failed: int = 0
    forbidden: list[str] = dataclasses.field(default_factory=list)
    truncated: bool = False

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# == inside the sandbox ==========================================================================
# The functions named _sb_* run in the sandbox's own interpreter, started with `python -I -c`:
# their source is shipped as the program text (see _program), so they use only the standard
# library, the modules imported in _SB_IMPORTS and each other.

_SB_IMPORTS = (
    "import builtins, ctypes, errno, json, linecache, os, resource, selectors, signal, socket, sys, "
    "time, traceback, types\n"
)


def _sb_libc():
    return ctypes.CDLL(None, use_errno=True)


def _sb_check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _sb_mount(libc, src, target, fstype, flags, data=None):
    enc = lambda s: None if s is None else s.encode()
    _sb_check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _sb_under(path, root):
    return path == root or path.startswith(root.rstrip("/") + "/")


def _sb_setup_mounts(job):
    """Namespace levels, as (namespace) root before the fork: private /tmp, hidden paths, read-only rest."""
    MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
    MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE = 1024, 2048, 4096, 16384, 1 << 18
    MS_RELATIME, MS_STRICTATIME = 1 << 21, 1 << 24
    libc = _sb_libc()
    for kind in ("mnt", "net"):
        if os.stat(f"/proc/self/ns/{kind}").st_ino == job[f"host_{kind}_ns"]:
            raise RuntimeError(f"not in a new {kind} namespace; refusing to touch mounts")
    _sb_mount(libc, None, "/", None, MS_REC | MS_PRIVATE)

    covered = []
    for p in list(job["hide_paths"]) + ["/tmp", "/var/tmp", "/dev/shm"]:
        if os.path.isdir(p):
            real = os.path.realpath(p)
            if real != "/" and real not in covered:
                covered.append(real)
    covered.sort(key=len)
    covered = [c for i, c in enumerate(covered) if not any(_sb_under(c, o) for o in covered[:i])]

    keep = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                                          os.path.dirname(os.path.realpath(sys.executable)))}
    keep |= {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    keep = sorted(k for k in keep if any(_sb_under(k, c) and k != c for c in covered))
    keep = [k for i, k in enumerate(keep) if not any(_sb_under(k, o) for o in keep[:i])]
    keep_fds = {k: os.open(k, os.O_PATH | os.O_DIRECTORY) for k in keep}

    for c in covered:
        if c in ("/var/tmp", "/dev/shm"):
            continue
        data = f"size={job['tmpfs_mb']}m,nr_inodes=32768,mode=1777" if c == "/tmp" else "size=1m,nr_inodes=4096,mode=755"
        _sb_mount(libc, "tmpfs", c, "tmpfs", MS_NOSUID | MS_NODEV, data)
    for c in ("/var/tmp", "/dev/shm"):
        if c in covered:
            _sb_mount(libc, "/tmp", c, None, MS_BIND)
    for k, fd in keep_fds.items():
        os.makedirs(k, exist_ok=True)
        _sb_mount(libc, f"/proc/self/fd/{fd}", k, None, MS_BIND | MS_REC)
        os.close(fd)

    flag_of = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
               "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
    writable = {"/tmp", "/var/tmp", "/dev/shm"}
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        head, *rest = fields[4].split("\\")  # mountinfo escapes space, tab, newline and backslash as \ooo
        point = head + "".join(chr(int(r[:3], 8)) + r[3:] for r in rest)
        if point in writable:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        for opt in fields[5].split(","):
            flags |= flag_of.get(opt, 0)
        if libc.mount(None, point.encode(), None, ctypes.c_ulong(flags), None) != 0 and point == "/":
            _sb_check(-1, "remount / read-only")


def _sb_drop_privileges(job, libc):
    PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_SET_SECUREBITS, PR_CAP_AMBIENT = 38, 24, 28, 47
    level = job["level"]
    if level in ("namespaces", "uid"):
        uid = job["uid"]
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif level == "userns":
        # Root of the user namespace: no uid to switch to, so drop every capability and make sure
        # an exec cannot give them back (no root privileges on exec, empty bounding set).
        _sb_check(libc.prctl(PR_SET_SECUREBITS, 0xC3, 0, 0, 0), "securebits")  # NOROOT(+LOCKED), NO_CAP_AMBIENT_RAISE(+LOCKED)
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            _sb_check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap}")
        libc.prctl(PR_CAP_AMBIENT, 4, 0, 0, 0)

        class Header(ctypes.Structure):
            _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

        class Data(ctypes.Structure):
            _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

        _sb_check(libc.capset(ctypes.byref(Header(0x20080522, 0)), (Data * 2)()), "capset")
    _sb_check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def _sb_user_processes(uid):
    n = 0
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/status") as f:
                status = f.read()
        except (OSError, ValueError):
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1 0").split()[0]) == uid:
            n += int(fields.get("Threads", "1"))
    return n


def _sb_limits(job):
    mb = 1 << 20
    cpu = max(1, int(-(-(job["cpu_s"] or job["timeout_s"]) // 1)))
    nproc = job["max_processes"]
    if job["level"] == "none":
        nproc += _sb_user_processes(os.getuid())  # RLIMIT_NPROC counts all of the caller's processes here
    limits = [
        (resource.RLIMIT_AS, job["memory_mb"] * mb),
        (resource.RLIMIT_CPU, cpu),
        (resource.RLIMIT_NPROC, nproc),
        (resource.RLIMIT_FSIZE, job["max_file_mb"] * mb),
        (resource.RLIMIT_NOFILE, job["max_open_files"]),
        (resource.RLIMIT_CORE, 0),
        (resource.RLIMIT_STACK, 8 * mb),
        (resource.RLIMIT_MEMLOCK, 0),
        (resource.RLIMIT_MSGQUEUE, 0),
    ]
    for res, value in limits:
        hard = resource.getrlimit(res)[1]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        hard_new = value + 1 if res == resource.RLIMIT_CPU and (hard == resource.RLIM_INFINITY or value < hard) else value
        resource.setrlimit(res, (value, hard_new))


def _sb_classify(exc, where):
    name = type(exc).__name__
    text = str(exc)
    reason = f"{where}: {name}: {text}" if text else f"{where}: {name}"
    if isinstance(exc, MemoryError):
        return "memory", reason
    if isinstance(exc, OSError):
        if exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
            return "output_limit", reason
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENETUNREACH, errno.ENETDOWN,
                         errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
            return "forbidden", reason
    return "failed", reason


def _sb_guard(job, emit):
    """An audit hook that blocks and reports naive escapes; the kernel layers are the real fence."""
    roots = [os.path.realpath(r) for r in job["write_roots"]]
    dev_ok = ("/dev/null", "/dev/zero", "/dev/full", "/dev/tty", "/dev/stdout", "/dev/stderr")
    fd_prefixes = ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/")
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    path_events = {"os.remove": (0,), "os.rename": (0, 1), "os.mkdir": (0,), "os.rmdir": (0,), "os.chmod": (0,),
                   "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,), "os.truncate": (0,), "os.utime": (0,),
                   "os.mkfifo": (0,), "os.mknod": (0,), "shutil.rmtree": (0,)}
    net_events = ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg")
    watched = frozenset(path_events) | frozenset(net_events) | {"open", "os.kill", "os.killpg"}
    reported = []

    def inside(path):
        if isinstance(path, int) or path is None:
            return True
        try:
            p = os.fsdecode(os.fspath(path))
        except TypeError:
            return True
        if p in dev_ok or p.startswith(fd_prefixes):
            return True
        real = os.path.realpath(p)
        return any(_sb_under(real, r) for r in roots)

    def descendant(pid):
        me = os.getpid()
        for _ in range(64):
            if pid == me:
                return True
            if pid <= 1:
                return False
            try:
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return False
        return False

    def block(what):
        if len(reported) < 20:
            reported.append(what)
            emit({"event": "forbidden", "what": what[:300]})
        raise PermissionError(errno.EPERM, f"blocked by the phi4ray sandbox: {what}")

    def hook(event, args):
        if event not in watched:
            return
        if event in net_events:
            sock, address = args[0], args[1]
            if getattr(sock, "family", None) == socket.AF_UNIX and isinstance(address, (str, bytes)) \
                    and address[:1] not in ("\0", b"\0", "", b"") and inside(address):
                return
            block(f"network: {event} {address!r}")
        elif event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                block(f"write outside the sandbox: {path!r}")
        elif event == "os.kill":
            pid, sig = args
            if sig != 0 and not (pid > 0 and descendant(pid)):
                block(f"signal {sig} to pid {pid}, not a process of the sandboxed code")
        elif event == "os.killpg":
            pgid, sig = args
            if sig != 0 and not (pgid > 0 and pgid != os.getpgid(0) and descendant(pgid)):
                block(f"signal {sig} to process group {pgid}, not one the sandboxed code started")
        else:
            for i in path_events[event]:
                if i < len(args) and not inside(args[i]):
                    block(f"{event} outside the sandbox: {args[i]!r}")

    sys.addaudithook(hook)


def _sb_run_user_code(job, emit):
    """Compile the code and tests, run them in one fresh __main__, call the test_* functions the tests define."""

    def done(status, reason, **extra):
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        emit({"event": "done", "status": status, "reason": reason[:1000], **extra})
        os._exit(0)

    sources = [("code", job["code"], "<solution>")]
    if job["tests"] is not None:
        sources.append(("tests", job["tests"], "<tests>"))
    compiled = []
    for label, src, filename in sources:
        try:
            compiled.append((label, compile(src, filename, "exec", dont_inherit=True)))
        except (SyntaxError, ValueError) as e:
            where = f" (line {e.lineno})" if getattr(e, "lineno", None) else ""
            done("error", f"syntax error in {label}{where}: {getattr(e, 'msg', None) or e}")
        linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)

    main = types.ModuleType("__main__")
    main.__file__ = "solution.py"
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = ["solution.py"]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    ns = main.__dict__
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)  # what was printed survives a kill
    _sb_guard(job, emit)

    test_fns = []
    for label, obj in compiled:
        before = dict(ns)
        try:
            exec(obj, ns)
        except SystemExit as e:
            if not (label == "code" and e.code in (None, 0)):
                done("failed", f"{label}: sys.exit({e.code!r})")
        except BaseException as e:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
            done(*_sb_classify(e, label))
        if label == "tests":
            test_fns = [v for k, v in ns.items() if k.startswith("test_") and callable(v) and before.get(k) is not v]

    failures = []
    for fn in test_fns:
        try:
            fn()
        except BaseException as e:
            traceback.print_exception(type(e), e, e.__traceback__.tb_next)
            failures.append(_sb_classify(e, getattr(fn, "__name__", "test")))
    extra = {"tests_run": len(test_fns), "tests_failed": len(failures)}
    if failures:
        order = ("memory", "forbidden", "output_limit", "failed")
        status = min((s for s, _ in failures), key=order.index)
        reason = next(r for s, r in failures if s == status)
        if len(failures) > 1:
            reason += f" (and {len(failures) - 1} more failing test(s))"
        done(status, reason, **extra)
    done("passed", f"ran {len(test_fns)} test function(s)" if test_fns else "ran to completion", **extra)


def _sb_child(job, results_w):
    emit = lambda record: os.write(results_w, (json.dumps(record) + "\n").encode())
    try:
        if job["level"] != "none":  # at level none the host's process-group kill is all that reaches strays
            os.setsid()
        libc = _sb_libc()
        _sb_limits(job)
        if job["nice"]:
            os.nice(job["nice"])
        _sb_drop_privileges(job, libc)
        os.chdir(job["workdir"])
        os.umask(0o022)
    except BaseException as e:
        emit({"event": "setup_error", "reason": f"{type(e).__name__}: {e}"})
        os._exit(71)
    _sb_run_user_code(job, emit)


def _sb_kill_rest(job, me):
    """uid: every process of the run's uid; none: every descendant. The monitor is their subreaper."""
    for _ in range(500):
        stats = {}
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != me:
                try:
                    with open(f"/proc/{name}/stat") as f:
                        state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
                    if state != "Z":
                        stats[int(name)] = (int(ppid), os.stat(f"/proc/{name}").st_uid)
                except (OSError, ValueError, IndexError):
                    pass
        if job["level"] == "uid":
            victims = [pid for pid, (_, uid) in stats.items() if uid == job["uid"]]
        else:
            tree, grew = {me}, True
            while grew:
                new = {pid for pid, (ppid, _) in stats.items() if ppid in tree and pid not in tree}
                tree |= new
                grew = bool(new)
            victims = sorted(tree - {me})
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not victims:
            return
        time.sleep(0.002)


def _sb_monitor():
    payload_fd, report_fd = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # pid 1 with no handlers ignores signals from inside
    chunks = []
    while chunk := os.read(payload_fd, 1 << 16):
        chunks.append(chunk)
    os.close(payload_fd)
    job = json.loads(b"".join(chunks))
    report = {"setup_error": None, "events": [], "timed_out": False, "exit_code": None, "signal": None,
              "wall_s": 0.0, "cpu_s": 0.0, "max_rss_kb": 0}

    def finish():
        os.write(report_fd, json.dumps(report).encode())
        os.close(report_fd)
        os._exit(0)

    level = job["level"]
    try:
        if level in ("namespaces", "userns"):
            _sb_setup_mounts(job)
        else:
            _sb_check(_sb_libc().prctl(36, 1, 0, 0, 0), "child subreaper")  # PR_SET_CHILD_SUBREAPER
    except BaseException as e:
        report["setup_error"] = f"{type(e).__name__}: {e}"
        finish()

    results_r, results_w = os.pipe()
    t0 = time.monotonic()
    child = os.fork()
    if child == 0:
        try:
            os.close(results_r)
            os.close(report_fd)
            _sb_child(job, results_w)
        finally:
            os._exit(70)
    os.close(results_w)

    sel = selectors.DefaultSelector()
    os.set_blocking(results_r, False)
    sel.register(results_r, selectors.EVENT_READ, "results")
    try:
        sel.register(os.pidfd_open(child), selectors.EVENT_READ, "child")
    except (AttributeError, OSError):
        pass
    buf, cap = bytearray(), 1 << 16
    deadline = t0 + job["timeout_s"]
    exited = False

    def read_results():
        try:
            while data := os.read(results_r, 1 << 16):
                if len(buf) < cap:
                    buf.extend(data[: cap - len(buf)])
        except BlockingIOError:
            return
        if results_r in sel.get_map():  # EOF: the code may have closed its end and run on
            sel.unregister(results_r)

    def reap(block):
        nonlocal exited
        while True:
            try:
                pid, status, ru = os.wait4(-1, 0 if block and not exited else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            report["cpu_s"] += ru.ru_utime + ru.ru_stime
            report["max_rss_kb"] = max(report["max_rss_kb"], ru.ru_maxrss)
            if pid == child:
                exited = True
                report["wall_s"] = time.monotonic() - t0
                if os.WIFSIGNALED(status):
                    report["signal"] = os.WTERMSIG(status)
                else:
                    report["exit_code"] = os.WEXITSTATUS(status)
                return

    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            report["timed_out"] = True
            break
        for key, _ in sel.select(min(remaining, 0.05)):
            if key.data == "results":
                read_results()
        reap(block=False)

    if report["timed_out"]:
        if level in ("namespaces", "userns"):
            os.kill(-1, signal.SIGKILL)  # pid 1 of the namespace: everything else in it
        else:
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        reap(block=True)
        report["wall_s"] = time.monotonic() - t0
    if level in ("uid", "none"):
        _sb_kill_rest(job, os.getpid())
    read_results()
    events = []
    for line in bytes(buf).splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            events.append(record)
    report["events"] = events
    finish()


_SANDBOX_SIDE = (_sb_libc, _sb_check, _sb_mount, _sb_under, _sb_setup_mounts, _sb_drop_privileges,
                 _sb_user_processes, _sb_limits, _sb_classify, _sb_guard, _sb_run_user_code, _sb_child,
                 _sb_kill_rest, _sb_monitor)
_program_text: str | None = None


def _program() -> str:
    global _program_text
    if _program_text is None:
        parts = [_SB_IMPORTS] + [inspect.getsource(fn) for fn in _SANDBOX_SIDE] + ["_sb_monitor()\n"]
        _program_text = "\n".join(parts)
    return _program_text


# == the caller's side ===========================================================================
_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()
_probe_lock = threading.Lock()
_probed: dict[tuple[str, str], str | None] = {}
_rng = random.SystemRandom()


def _alloc_uid() -> int:
    with _uid_lock:
        while True:
            uid = _rng.randrange(*UID_RANGE)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _free_uid(uid: int | None) -> None:
    if uid is not None:
        with _uid_lock:
            _uids_in_use.discard(uid)


def _kill_uid(uid: int) -> None:
    """Root only: SIGKILL every live process whose owner is `uid`, until none is left."""
    for _ in range(500):
        victims = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.stat(f"/proc/{name}").st_uid != uid:
                        continue
                    with open(f"/proc/{name}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] != "Z":
                            victims.append(int(name))
                except (OSError, IndexError):
                    pass
        if not victims:
            return
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.002)


def _sandbox_env(cfg: SandboxConfig, home: str, python: str) -> dict[str, str]:
    env = {
        "PATH": os.pathsep.join(dict.fromkeys([os.path.dirname(python), "/usr/local/bin", "/usr/bin", "/bin"])),
        "HOME": home, "TMPDIR": home, "USER": "sandbox", "LOGNAME": "sandbox",
        "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1",
        "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1", "MPLBACKEND": "Agg",
    }
    env.update(cfg.env)
    return env


def _signal_name(num: int | None) -> str | None:
    if num is None:
        return None
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _run_level(code: str, tests: str | None, stdin: str | bytes | None, cfg: SandboxConfig, level: str) -> SandboxResult:
    uid = _alloc_uid() if os.geteuid() == 0 and level in ("namespaces", "userns", "uid") else None
    fds: dict[str, int] = {}
    workdir: list[str] = []
    t0 = time.monotonic()
    try:
        out = _start_and_supervise(code, tests, stdin, cfg, level, uid, fds, workdir)
        return _result(out, cfg, level, uid, time.monotonic() - t0)
    except (OSError, subprocess.SubprocessError) as e:
        return SandboxResult("error", f"could not start the sandbox: {type(e).__name__}: {e}", isolation=level,
                             sandbox_uid=uid, wall_s=round(time.monotonic() - t0, 3))
    finally:
        for fd in fds.values():
            os.close(fd)
        if level == "uid" and uid is not None:
            _kill_uid(uid)
        _free_uid(uid)
        for d in workdir:
            shutil.rmtree(d, ignore_errors=True)


def _start_and_supervise(code: str, tests: str | None, stdin: str | bytes | None, cfg: SandboxConfig, level: str,
                         uid: int | None, fds: dict[str, int], workdir: list[str]) -> dict:
    """Start the monitor (under unshare at the namespace levels); `fds` and `workdir` are the caller's to clean."""
    python = cfg.python or sys.executable
    if level in ("uid", "none"):
        workdir.append(tempfile.mkdtemp(prefix="phi4ray-sandbox-"))
        if uid is not None:
            os.chown(workdir[0], uid, uid)
    home = workdir[0] if workdir else "/tmp"
    job = {
        "level": level, "code": code, "tests": tests, "uid": uid, "workdir": home,
        "write_roots": [home] + ([] if workdir else ["/var/tmp", "/dev/shm"]),
        "timeout_s": cfg.timeout_s, "cpu_s": cfg.cpu_s, "memory_mb": cfg.memory_mb,
        "max_processes": cfg.max_processes, "max_file_mb": cfg.max_file_mb,
        "max_open_files": cfg.max_open_files, "tmpfs_mb": cfg.tmpfs_mb, "nice": cfg.nice,
        "hide_paths": cfg.hide_paths,
        "host_mnt_ns": os.stat("/proc/self/ns/mnt").st_ino, "host_net_ns": os.stat("/proc/self/ns/net").st_ino,
    }
    fds["payload_r"], fds["payload_w"] = os.pipe()
    fds["report_r"], fds["report_w"] = os.pipe()
    argv = [python, "-I", "-B", "-c", _program(), str(fds["payload_r"]), str(fds["report_w"])]
    popen_kw: dict[str, Any] = {}
    if level in ("namespaces", "userns"):
        ns = ["--net", "--mount", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc"]
        if level == "userns":
            ns = ["--user", "--map-root-user", *ns]
            if uid is not None:
                popen_kw = {"user": uid, "group": uid, "extra_groups": []}
        argv = [shutil.which("unshare") or "/usr/bin/unshare", *ns, *argv]
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, pass_fds=(fds["payload_r"], fds["report_w"]), start_new_session=True,
        close_fds=True, cwd=home if workdir else "/", env=_sandbox_env(cfg, home, python), **popen_kw)
    for name in ("payload_r", "report_w"):
        os.close(fds.pop(name))
    data = stdin.encode("utf-8", "surrogatepass") if isinstance(stdin, str) else stdin
    return _supervise(proc, cfg, level, uid, json.dumps(job).encode(), fds, data)


def _supervise(proc, cfg: SandboxConfig, level: str, uid: int | None, payload: bytes, fds: dict[str, int],
               stdin_data: bytes | None) -> dict:
    """Feed the payload and stdin, collect capped stdout/stderr and the monitor's report, enforce the backstop.

    Closes (and removes from `fds`) the pipe ends it finishes with; the caller closes what is left.
    """
    cap = cfg.max_output_bytes
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    streams = {out_fd: bytearray(), err_fd: bytearray()}
    report = bytearray()
    writes = {fds["payload_w"]: memoryview(payload)}
    if stdin_data is not None:
        writes[proc.stdin.fileno()] = memoryview(stdin_data)
    sel = selectors.DefaultSelector()
    for fd in (out_fd, err_fd, fds["report_r"]):
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    for fd in writes:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_WRITE)
    pidfd = None
    if hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
            sel.register(pidfd, selectors.EVENT_READ)
        except OSError:
            pidfd = None
    # The monitor enforces timeout_s itself; this backstop covers its startup and a monitor that hangs.
    backstop = time.monotonic() + cfg.timeout_s + 30.0
    state: dict[str, Any] = {"output_exceeded": None, "host_timeout": False, "truncated": False}
    exited_at = None

    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        if level == "uid" and uid is not None:
            _kill_uid(uid)

    def close_write(fd):
        sel.unregister(fd)
        del writes[fd]
        if fd == fds.get("payload_w"):
            os.close(fds.pop("payload_w"))
        else:
            proc.stdin.close()

    try:
        while True:
            now = time.monotonic()
            if exited_at is None and now > backstop:
                state["host_timeout"] = True
                kill()
                backstop = float("inf")
            if exited_at is not None:
                for fd in list(writes):
                    close_write(fd)
                readers = [k for k in sel.get_map().values() if k.fd != pidfd]
                if not readers or now - exited_at > 1.0:
                    break
            for key, _ in sel.select(0.05):
                fd = key.fd
                if fd == pidfd:
                    sel.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = None
                    exited_at = time.monotonic()
                elif fd in writes:
                    try:
                        n = os.write(fd, writes[fd])
                        writes[fd] = writes[fd][n:]
                        if not writes[fd]:
                            close_write(fd)
                    except BrokenPipeError:
                        close_write(fd)
                    except BlockingIOError:
                        pass
                else:
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        continue
                    if not data:
                        sel.unregister(fd)
                    elif fd == fds["report_r"]:
                        report.extend(data)
                    else:
                        buf = streams[fd]
                        room = cap - len(buf)
                        buf.extend(data[:max(room, 0)])
                        if len(data) > room:
                            state["truncated"] = True
                            if state["output_exceeded"] is None:
                                state["output_exceeded"] = "stdout" if fd == out_fd else "stderr"
                                kill()
            if pidfd is None and exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
    finally:
        for fd in list(writes):
            close_write(fd)
        if pidfd is not None:
            os.close(pidfd)
        sel.close()
        if proc.poll() is None:
            kill()
        proc.wait()
        # Anything still holding stdout/stderr open here escaped the process group (levels uid/none).
        proc.stdout.close()
        proc.stderr.close()
    try:
        monitor = json.loads(bytes(report)) if report else None
    except ValueError:
        monitor = None
    return {**state, "monitor": monitor, "stdout": bytes(streams[out_fd]), "stderr": bytes(streams[err_fd]),
            "returncode": proc.returncode}


def _result(out: dict, cfg: SandboxConfig, level: str, uid: int | None, host_wall: float) -> SandboxResult:
    text = lambda b: b.decode("utf-8", errors="replace")
    r = SandboxResult("error", "", stdout=text(out["stdout"]), stderr=text(out["stderr"]), isolation=level,
                      sandbox_uid=uid, truncated=out["truncated"], wall_s=round(host_wall, 3))
    mon = out["monitor"]
    if mon is not None:
        r.exit_code, r.signal = mon["exit_code"], _signal_name(mon["signal"])
        r.wall_s = round(mon["wall_s"], 3)
        r.cpu_s = round(mon["cpu_s"], 3)
        r.max_rss_mb = round(mon["max_rss_kb"] / 1024, 1)
        events = mon["events"]
    else:
        events = []
    r.forbidden = [e.get("what", "") for e in events if e.get("event") == "forbidden"]
    done = next((e for e in events if e.get("event") == "done"), None)
    child_setup = next((e for e in events if e.get("event") == "setup_error"), None)
    if done:
        r.tests_run, r.tests_failed = int(done.get("tests_run", 0)), int(done.get("tests_failed", 0))

    if out["output_exceeded"]:
        r.status, r.reason = "output_limit", f"{out['output_exceeded']} exceeded {cfg.max_output_bytes} bytes"
    elif mon is None:
        if out["host_timeout"]:
            r.status, r.reason = "timeout", "the sandbox did not finish within timeout_s + 30 s"
        else:
            tail = r.stderr.strip().splitlines()[-3:]
            r.status = "error"
            r.reason = f"the sandbox monitor ended without a report (exit status {out['returncode']})" + \
                (": " + " | ".join(tail) if tail else "")
    elif mon["setup_error"] or child_setup:
        r.status = "error"
        r.reason = f"sandbox setup failed ({level}): " + (mon["setup_error"] or child_setup["reason"])
    elif mon["timed_out"]:
        r.status, r.reason = "timeout", f"wall-clock limit of {cfg.timeout_s:g} s"
    elif r.signal == "SIGXCPU":
        r.status, r.reason = "timeout", f"CPU time limit of {cfg.cpu_s or cfg.timeout_s:g} s"
    elif r.forbidden:
        r.status, r.reason = "forbidden", r.forbidden[0]
    elif done and done.get("status") in STATUSES:
        r.status, r.reason = done["status"], str(done.get("reason", ""))
        if r.status == "passed" and (r.exit_code != 0 or r.signal):
            r.status, r.reason = "failed", f"the tests passed but the process ended with {r.signal or r.exit_code}"
    elif r.signal == "SIGXFSZ":
        r.status, r.reason = "output_limit", f"file size limit of {cfg.max_file_mb} MB"
    elif r.signal:
        hint = " (the kernel's OOM killer, or the code itself)" if r.signal == "SIGKILL" else ""
        r.status, r.reason = "failed", f"killed by {r.signal}{hint} before the tests finished"
    else:
        r.status, r.reason = "failed", f"exited with code {r.exit_code} before the tests finished"
    return r


# == choosing a level ============================================================================
def _candidates() -> list[str]:
    return ["namespaces", "userns", "uid"] if os.geteuid() == 0 else ["userns", "none"]


def probe_isolation(level: str, python: str | None = None) -> str | None:
    """None when `level` works here (one trivial sandboxed run, cached per process), else why not."""
    if level not in LEVELS:
        raise ValueError(f"unknown isolation level {level!r}; levels: {', '.join(LEVELS)}")
    key = (level, python or sys.executable)
    with _probe_lock:  # the first batch of a process would otherwise probe once per thread
        if key not in _probed:
            _probed[key] = _probe(level, python)
        return _probed[key]


def _probe(level: str, python: str | None) -> str | None:
    if level in ("namespaces", "uid") and os.geteuid() != 0:
        return f"{level} needs root"
    if level == "none" and os.geteuid() == 0:
        return "none is not used as root (RLIMIT_NPROC does not bind root); uid is the root fallback"
    if level in ("namespaces", "userns") and not (shutil.which("unshare") or os.path.exists("/usr/bin/unshare")):
        return "util-linux unshare not found"
    cfg = SandboxConfig(timeout_s=30, isolation=level, python=python)
    # Modules the monitor has not imported yet: a dropped uid must be able to read the installation.
    r = _run_level("import decimal, subprocess\nassert decimal.Decimal(1)", None, None, cfg, level)
    return None if r.status == "passed" else f"{r.status}: {r.reason}"


def resolve_isolation(requested: str = "auto", python: str | None = None) -> str:
    """The level a run with `isolation=requested` uses here; raises RuntimeError when it cannot run."""
    if requested != "auto":
        why = probe_isolation(requested, python)
        if why:
            raise RuntimeError(f"isolation {requested!r} is not available here: {why}")
        return requested
    reasons = []
    for level in _candidates():
        why = probe_isolation(level, python)
        if why is None:
            return level
        reasons.append(f"{level}: {why}")
    raise RuntimeError("no sandbox isolation level works here: " + "; ".join(reasons))


# == public API ==================================================================================
def run_code(code: str, tests: str | None = None, *, config: SandboxConfig | None = None,
             stdin: str | bytes | None = None, timeout_s: float | None = None, memory_mb: int | None = None,
             max_processes: int | None = None, max_file_mb: int | None = None,
             max_output_bytes: int | None = None, isolation: str | None = None) -> SandboxResult:
    """Run `code`, then `tests` in the same namespace, in a sandbox; keyword limits override `config`.

    `code` runs as `__main__` (an `if __name__ == "__main__":` block runs; `sys.exit(0)` ends it
    early without failing). Then `tests` runs, and every test_* function it defines is called, in
    order. Never raises for anything the code does; a sandbox that cannot start is `error`.
    """
    if not isinstance(code, str) or not isinstance(tests, (str, type(None))):
        raise TypeError("run_code takes the code (and the tests, or None) as str")
    cfg = config or SandboxConfig()
    given = {"timeout_s": timeout_s, "memory_mb": memory_mb, "max_processes": max_processes,
             "max_file_mb": max_file_mb, "max_output_bytes": max_output_bytes, "isolation": isolation}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides:
        cfg = SandboxConfig(**{**cfg.model_dump(), **overrides})
    try:
        level = resolve_isolation(cfg.isolation, cfg.python)
    except RuntimeError as e:
        return SandboxResult("error", str(e), isolation="unavailable")
    return _run_level(code, tests, stdin, cfg, level)


def run_many(items: Iterable[str | tuple | dict], config: SandboxConfig | None = None,
             max_workers: int | None = None) -> list[SandboxResult]:
    """Run many snippets concurrently (a thread pool of sandboxes); results in input order.

    An item is `code`, `(code, tests)`, or a dict with `code` and optional `tests` and `stdin`.
    """
    jobs = []
    for item in items:
        if isinstance(item, str):
            jobs.append({"code": item})
        elif isinstance(item, dict):
            jobs.append({k: item.get(k) for k in ("code", "tests", "stdin")})
        else:
            jobs.append(dict(zip(("code", "tests", "stdin"), item)))
    if not jobs:
        return []
    workers = max_workers or len(os.sched_getaffinity(0))
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(lambda j: run_code(j["code"], j.get("tests"), stdin=j.get("stdin"), config=config), jobs))


def cli_main(args) -> int:
    """`phi4ray sandbox FILE.py [--tests T.py] [--timeout S] [--memory-mb M]`: 0 passed, 1 not, 2 usage."""
    texts = []
    for path in (args.file, args.tests):
        if path is None:
            texts.append(None)
            continue
        try:
            with open(path, encoding="utf-8") as f:
                texts.append(f.read())
        except (OSError, UnicodeDecodeError) as e:
            print(f"phi4ray sandbox: cannot read {path}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
            return 2
    try:
        cfg = SandboxConfig(**{k: v for k, v in (("timeout_s", args.timeout), ("memory_mb", args.memory_mb)) if v is not None})
    except ValidationError as e:
        msgs = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        print(f"phi4ray sandbox: {msgs}", file=sys.stderr)
        return 2
    result = run_code(texts[0], texts[1], config=cfg)
    print(json.dumps(result.to_dict(), indent=2))
    return 0 if result.passed else 1
