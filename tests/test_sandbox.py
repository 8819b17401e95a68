"""The code sandbox (phi4ray/synth/sandbox.py) against hostile snippets, run for real.

Each hostile snippet must come back with a classified status while the host stays as it was: no
file written outside, no connection accepted, no secret echoed, no process left behind, and this
test process alive. Checks that need a facility the machine lacks (namespaces; an interpreter an
unprivileged uid can read) skip with the reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from phi4ray.synth.sandbox import SandboxConfig, probe_isolation, resolve_isolation, run_code, run_many

REPO = Path(__file__).resolve().parents[1]
# Inside the sandbox /tmp is a private tmpfs, so a checkout under /tmp is invisible there: writes
# to it fail as missing paths, never reaching the host, instead of being reported as forbidden.
repo_visible = pytest.mark.skipif(
    str(REPO).startswith("/tmp/"), reason="the checkout is under /tmp, which the sandbox replaces with its own"
)
HANGS = SandboxConfig(timeout_s=2.0)  # for snippets that never finish by themselves
NAMESPACED = ("namespaces", "userns")


@pytest.fixture(scope="module")
def level() -> str:
    try:
        return resolve_isolation("auto")
    except RuntimeError as e:
        pytest.skip(str(e))


@pytest.fixture(autouse=True)
def _needs_a_working_sandbox(level: str) -> None:
    """Every check here runs the real sandbox; where no isolation level works at all, they all skip."""


def sandbox_processes(uid: int | None = None) -> set[int]:
    """Live processes of the run's own uid; without one (a non-root caller), of any sandbox here:
    the monitor's program text is in their command line, and forks keep it."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue
            if uid is not None:
                mine = os.stat(f"/proc/{name}").st_uid == uid
            else:
                with open(f"/proc/{name}/cmdline", "rb") as f:
                    mine = b"_sb_monitor()" in f.read()
            if mine:
                found.add(int(name))
        except (OSError, IndexError):
            continue
    return found


def assert_no_strays(uid: int | None, before: set[int] = frozenset()) -> None:
    """No process of the run is left (other sandboxes that ran before it, without a uid, excepted)."""
    deadline = time.monotonic() + 5.0
    while (left := sandbox_processes(uid) - before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"sandbox processes left running: {sorted(left)}"


def code(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"


# -- ordinary code ------------------------------------------------------------------------------
def test_passing_code_with_asserts_and_test_functions(level):
    r = run_code(
        code("""
            def add(a, b):
                return a + b
            print("hello from the sandbox")
        """),
        code("""
            assert add(2, 3) == 5
            def test_small():
                assert add(1, 1) == 2
            def test_negative():
                assert add(-1, 1) == 0
        """),
    )
    assert r.status == "passed", r
    assert r.passed and r.tests_run == 2 and r.tests_failed == 0
    assert r.stdout == "hello from the sandbox\n"
    assert r.isolation == level and r.exit_code == 0 and r.signal is None
    assert r.wall_s > 0 and r.cpu_s > 0 and r.max_rss_mb > 0
    assert json.loads(json.dumps(r.to_dict()))["status"] == "passed"


def test_failing_test_function_is_failed_with_its_traceback(level):
    r = run_code("def add(a, b):\n    return a - b\n",
                 "def test_ok():\n    assert add(1, 0) == 1\n\ndef test_bad():\n    assert add(2, 3) == 5, 'wrong sum'\n")
    assert r.status == "failed", r
    assert r.tests_run == 2 and r.tests_failed == 1
    assert "test_bad" in r.reason and "wrong sum" in r.reason
    assert 'File "<tests>", line 5, in test_bad' in r.stderr


def test_exception_in_code_is_failed():
    r = run_code("x = {}\nx['missing']\n", "assert True")
    assert r.status == "failed" and "KeyError" in r.reason, r
    assert 'File "<solution>", line 2' in r.stderr


@pytest.mark.parametrize("where", ["code", "tests"])
def test_syntax_error_is_error(where):
    bad = "def f(:\n    pass\n"
    r = run_code(bad, None) if where == "code" else run_code("x = 1\n", bad)
    assert r.status == "error" and f"syntax error in {where}" in r.reason, r


def test_exit_before_the_tests_is_not_a_pass():
    r = run_code("import os\nos._exit(0)\n", "assert False, 'never reached'")
    assert r.status == "failed" and "before the tests finished" in r.reason, r
    r = run_code("import sys\nprint('done')\nsys.exit(0)\n", "assert 1 + 1 == 2")
    assert r.status == "passed", r
    r = run_code("import sys\nsys.exit(3)\n")
    assert r.status == "failed" and "sys.exit(3)" in r.reason, r


def test_closing_the_report_channel_is_not_a_pass():
    r = run_code("import os\nos.closerange(3, 1024)\nprint('ran')\n", "assert True", config=SandboxConfig(timeout_s=20))
    assert r.status == "failed" and r.stdout == "ran\n" and r.wall_s < 15, r


def test_stdin_is_fed_to_the_code():
    r = run_code("import sys\nprint(input()[::-1])\nprint(len(sys.stdin.read()))\n", stdin="olleh\n" + "z" * 200_000)
    assert r.status == "passed" and r.stdout == "hello\n200000\n", r


# -- hostile code --------------------------------------------------------------------------------
def test_infinite_loop_times_out():
    before = sandbox_processes()
    r = run_code("while True:\n    pass\n", config=HANGS)
    assert r.status == "timeout" and "wall-clock" in r.reason, r
    assert 1.9 <= r.wall_s < 10
    assert_no_strays(r.sandbox_uid, before)


def test_cpu_time_limit():
    r = run_code("while True:\n    pass\n", config=SandboxConfig(timeout_s=60, cpu_s=1))
    assert r.status == "timeout" and "CPU" in r.reason and r.signal == "SIGXCPU", r
    assert r.cpu_s < 3


def test_fork_bomb_is_contained_and_leaves_nothing(level):
    before = sandbox_processes()
    bomb = code("""
        import os
        while True:
            try:
                if os.fork() == 0:
                    os.setsid()
            except OSError:
                pass
    """)
    r = run_code(bomb, config=HANGS)
    assert r.status == "timeout", r
    assert_no_strays(r.sandbox_uid, before)


def test_process_limit_binds(level):
    before = sandbox_processes()
    r = run_code(code("""
        import os, time
        n = 0
        for _ in range(200):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            n += 1
        print(n)
    """), config=SandboxConfig(max_processes=8, timeout_s=20))
    assert r.status == "passed", r
    assert int(r.stdout) < 8
    assert_no_strays(r.sandbox_uid, before)


@pytest.mark.parametrize("hog", ["x = bytearray(1 << 30)", "chunks = []\nwhile True:\n    chunks.append(' ' * 10**6)"])
def test_memory_hog_is_memory(hog):
    r = run_code(hog + "\n", config=SandboxConfig(memory_mb=128))
    assert r.status == "memory" and "MemoryError" in r.reason, r
    assert r.max_rss_mb < 160


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_huge_output_is_cut(stream):
    r = run_code(f"import sys\nwhile True:\n    sys.{stream}.write('x' * 1000 + '\\n')\n",
                 config=SandboxConfig(max_output_bytes=4096, timeout_s=60))
    assert r.status == "output_limit" and stream in r.reason, r
    assert len(getattr(r, stream)) == 4096 and r.truncated
    assert r.wall_s < 30


def test_big_file_is_output_limit():
    r = run_code("with open('big.bin', 'wb') as f:\n    f.write(b'x' * (8 << 20))\n", config=SandboxConfig(max_file_mb=4))
    assert r.status == "output_limit" and "File too large" in r.reason, r


@repo_visible
def test_writes_outside_its_directory_do_not_reach_the_host(level):
    name = f"phi4ray_escape_{uuid.uuid4().hex}"
    # The interpreter's folder is never under /tmp, where the sandbox has a private tmpfs (a
    # checkout under /tmp, as CI may clone one, is not reachable from inside at all).
    targets = [str(REPO / name), f"/tmp/{name}", str(REPO / "phi4ray" / name), os.path.join(os.path.dirname(sys.executable), name)]
    # A shell gets past the Python guard: at uid, file permissions stop it, except in the host's
    # world-writable /tmp; at none, it has the caller's own rights.
    shell = {"namespaces": targets, "userns": targets, "uid": targets[::2]}.get(level, [])
    snippet = code(f"""
        import subprocess
        for path in {targets!r}:
            if path in {shell!r}:
                subprocess.run(["sh", "-c", "echo escaped > " + path], stderr=subprocess.DEVNULL)
            try:
                with open(path, "w") as f:
                    f.write("escaped")
            except OSError as e:
                print("refused:", path, e)
    """)
    try:
        r = run_code(snippet)
        assert r.status == "forbidden" and "write outside the sandbox" in r.reason, r
        for t in targets:
            assert not os.path.exists(t), f"{t} was written on the host"
    finally:
        for t in targets:
            if os.path.exists(t):
                os.unlink(t)


@repo_visible
def test_direct_write_into_the_repo_is_forbidden():
    target = REPO / f"phi4ray_escape_{uuid.uuid4().hex}"
    try:
        r = run_code(f"open({str(target)!r}, 'w').write('x')\n")
        assert r.status == "forbidden", r
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_environment_secrets_are_not_visible(monkeypatch):
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    monkeypatch.setenv("PHI4RAY_TEST_SECRET", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    r = run_code(code("""
        import glob, os
        print(dict(os.environ))
        for path in glob.glob("/proc/[0-9]*/environ"):
            try:
                with open(path, "rb") as f:
                    print(path, f.read())
            except OSError:
                pass
        assert "PHI4RAY_TEST_SECRET" in os.environ, "the secret is not in the environment"
    """))
    assert secret not in r.stdout + r.stderr
    assert r.status == "failed" and "the secret is not in the environment" in r.reason, r


@pytest.fixture
def listener():
    """A TCP listener on the host's 127.0.0.1 that records every connection it accepts."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                accepted.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], accepted
    stop.set()
    t.join()
    srv.close()
    for c in accepted:
        c.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "1.1.1.1"])
def test_sockets_are_forbidden(listener, host):
    port, accepted = listener
    target_port = port if host == "127.0.0.1" else 53
    r = run_code(f"import socket\nsocket.create_connection(({host!r}, {target_port}), timeout=2)\n")
    assert r.status == "forbidden" and "network" in r.reason, r
    time.sleep(0.2)
    assert accepted == []


def test_sockets_from_a_subprocess_find_no_network(level, listener):
    if level not in NAMESPACED:
        pytest.skip(f"isolation {level!r} has no network namespace; only the Python-level guard blocks sockets")
    port, accepted = listener
    r = run_code(code(f"""
        import subprocess, sys
        probe = "import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
        print(out.stdout, out.stderr[-300:])
        assert "connected" not in out.stdout
    """))
    assert r.status == "passed", r
    assert "Network is unreachable" in r.stdout or "Errno" in r.stdout
    time.sleep(0.2)
    assert accepted == []


@pytest.mark.parametrize("attack", [
    "os.kill(os.getppid(), signal.SIGKILL)",
    "os.killpg(os.getpgid(0), signal.SIGKILL)",
    "os.kill(-1, signal.SIGKILL)",
    "os.kill(1, signal.SIGTERM)",
])
def test_killing_the_parent_is_forbidden(attack):
    r = run_code(f"import os, signal\n{attack}\n")
    assert r.status == "forbidden" and "signal" in r.reason, r


def test_killing_the_parent_below_python_is_contained(level):
    if level == "none":
        pytest.skip("at level none the code runs as the caller's uid; kill(-1) would reach the caller's processes")
    r = run_code(code("""
        import ctypes, os, signal, time
        parent = os.getppid()
        libc = ctypes.CDLL(None)
        libc.kill(parent, signal.SIGKILL)
        libc.kill(-1, signal.SIGKILL)
        time.sleep(0.2)
        if os.getppid() == parent and os.path.exists(f"/proc/{parent}"):
            print("parent alive")
    """))
    assert r.status == "passed" and r.stdout == "parent alive\n", r
    # kill(-1) from a shell reaches every process of the sandbox's uid, the code included, and no other.
    r = run_code("import subprocess\nsubprocess.run(['kill', '-9', '-1'])\nprint('survived')\n")
    assert r.status == "failed" and r.signal == "SIGKILL" and "survived" not in r.stdout, r
    assert run_code("print('still works')").stdout == "still works\n"


def test_a_sandbox_sees_its_own_world_only(level):
    if level not in NAMESPACED:
        pytest.skip(f"isolation {level!r} has no mount or pid namespace")
    marker = Path("/tmp") / f"phi4ray_host_marker_{uuid.uuid4().hex}"
    marker.write_text("host")
    try:
        r = run_code(code(f"""
            import os
            print(os.path.exists({str(marker)!r}))
            print(len([p for p in os.listdir("/proc") if p.isdigit()]))
            print(sorted(os.listdir("/root")) if os.path.isdir("/root") else [])
            with open("/tmp/scratch.txt", "w") as f:
                f.write("mine")
            print(open("/tmp/scratch.txt").read())
        """))
    finally:
        marker.unlink()
    assert r.status == "passed", r
    seen_marker, n_procs, root_listing, scratch = r.stdout.splitlines()
    assert seen_marker == "False"
    assert int(n_procs) <= 3
    assert all(name in (".pyenv", ".local", ".cache", "miniconda3", "anaconda3", ".venv") for name in eval(root_listing))
    assert scratch == "mine"
    assert not Path("/tmp/scratch.txt").exists()


# -- batches, levels and the command line ------------------------------------------------------
def test_run_many_keeps_order_and_isolates_runs(level):
    items = [
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        ("def f():\n    return 41\n", "assert f() + 1 == 42"),
        {"code": "x = bytearray(1 << 30)\n"},
        "def broken(:\n",
        {"code": "print(input())", "stdin": "fed\n"},
    ]
    before = sandbox_processes()
    t0 = time.monotonic()
    results = run_many(items, config=HANGS, max_workers=5)
    assert [r.status for r in results] == ["timeout", "passed", "memory", "error", "passed"], results
    assert results[4].stdout == "fed\n"
    assert time.monotonic() - t0 < 30
    uids = [r.sandbox_uid for r in results if r.sandbox_uid is not None]
    assert len(set(uids)) == len(uids)
    assert_no_strays(results[0].sandbox_uid, before)


def _interpreter_for(level: str) -> str:
    """An interpreter that works at `level` here: ours, else the system one (readable by any uid)."""
    reasons = []
    for python in dict.fromkeys([sys.executable, "/usr/bin/python3"]):
        if os.path.exists(python):
            why = probe_isolation(level, python)
            if why is None:
                return python
            reasons.append(f"{python}: {why}")
    pytest.skip(f"isolation {level!r} does not work here: " + "; ".join(reasons))


@repo_visible
@pytest.mark.parametrize("forced", ["namespaces", "userns", "uid", "none"])
def test_each_available_level_contains_the_basics(forced):
    python = _interpreter_for(forced)
    before = sandbox_processes()
    cfg = SandboxConfig(isolation=forced, python=python, timeout_s=2.0)
    ok = run_code("print(6 * 7)", "assert True", config=cfg)
    assert ok.status == "passed" and ok.stdout == "42\n" and ok.isolation == forced, ok
    target = REPO / f"phi4ray_escape_{uuid.uuid4().hex}"
    try:
        w = run_code(f"open({str(target)!r}, 'w').write('x')\n", config=cfg)
        assert w.status == "forbidden" and not target.exists(), w
    finally:
        target.unlink(missing_ok=True)
    bomb = run_code("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", config=cfg)
    assert bomb.status == "timeout", bomb
    assert_no_strays(bomb.sandbox_uid, before)


def test_a_level_that_cannot_run_is_an_error_not_a_crash():
    impossible = "uid" if os.geteuid() != 0 else "none"
    r = run_code("print(1)", isolation=impossible)
    assert r.status == "error" and "not available" in r.reason, r


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "phi4ray.cli", "sandbox", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=60, check=False)


def test_cli_exit_codes(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("def double(x):\n    return 2 * x\nprint(double(21))\n")
    good = tmp_path / "good.py"
    good.write_text("def test_double():\n    assert double(2) == 4\n")
    bad = tmp_path / "bad.py"
    bad.write_text("def test_double():\n    assert double(2) == 5\n")

    p = _cli(str(prog), "--tests", str(good))
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "passed" and out["stdout"] == "42\n" and out["tests_run"] == 1

    p = _cli(str(prog), "--tests", str(bad), "--timeout", "5", "--memory-mb", "128")
    assert p.returncode == 1 and json.loads(p.stdout)["status"] == "failed"

    p = _cli(str(tmp_path / "missing.py"))
    assert p.returncode == 2 and "missing.py" in p.stderr and p.stdout == ""

    p = _cli(str(prog), "--timeout", "0")
    assert p.returncode == 2 and "timeout" in p.stderr
