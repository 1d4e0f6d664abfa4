"""Tests of synth.sandbox: untrusted Python runs without network, within limits, in a folder that disappears.

The network tests start a real TCP server on 127.0.0.1 in this process: sandboxed code that connects must fail and
the server must see no connection. A control run outside the sandbox connects, so the checks can fail. Attacks on
the host's files, processes and secrets are in tests/test_sandbox_escape.py.

    .venv/bin/python -m pytest tests/test_synth_sandbox.py -q
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from synth import bubblewrap, sandbox
from synth.sandbox import ISOLATION, SandboxLimits, SandboxUnavailable, run_many, run_python, run_tests

REPO = Path(__file__).resolve().parents[1]
FAST = SandboxLimits(cpu_s=2, wall_s=10, memory_mb=256)


@pytest.fixture()
def server():
    """A listening TCP server on 127.0.0.1; yields (port, accepted) where accepted() counts connections seen."""
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)

    def accepted() -> int:
        count = 0
        while True:
            try:
                conn, _ = srv.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    yield srv.getsockname()[1], accepted
    srv.close()


def connect_code(port: int) -> str:
    return (
        "import socket\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
        "s.sendall(b'hello')\n"
        "print('connected')\n"
    )


def test_control_run_outside_the_sandbox_reaches_the_server(server):
    port, accepted = server
    out = subprocess.run([sys.executable, "-c", connect_code(port)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "connected" in out.stdout
    assert accepted() == 1


def test_network_is_blocked(server):
    port, accepted = server
    result = run_python(connect_code(port), FAST)
    assert result.status == "failed"
    assert "connected" not in result.stdout
    assert result.error["type"] == "PermissionError"
    assert any(b.startswith(("socket.", "socket.__new__")) for b in result.blocked), result.blocked
    assert result.isolation == ISOLATION == "bwrap+audit"
    assert accepted() == 0


def test_network_namespace_alone_blocks(server):
    port, accepted = server
    result = sandbox._run({"main.py": connect_code(port)}, FAST, guard=False)
    assert result.isolation == "bwrap"
    assert result.status == "failed"
    assert result.error["type"] in ("OSError", "ConnectionRefusedError", "TimeoutError")
    assert accepted() == 0
    listed = sandbox._run(
        {"main.py": "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))"}, FAST, guard=False
    )
    assert listed.stdout.strip() == "['lo']"


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nprint(socket.getaddrinfo('example.com', 80))",
        "import socket\nprint(socket.gethostbyname('localhost'))",
        "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=3)\nprint('connected')",
        "import urllib.request\nprint(urllib.request.urlopen('http://93.184.216.34/', timeout=3).status)",
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'x', ('8.8.8.8', 53))\n"
        "print('sent')",
    ],
)
def test_dns_and_outside_addresses_fail(code):
    result = run_python(code, FAST)
    assert result.status == "failed"
    assert "connected" not in result.stdout and "sent" not in result.stdout
    assert result.blocked


def test_outside_address_fails_in_the_namespace_alone():
    code = "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=3)\nprint('connected')"
    result = sandbox._run({"main.py": code}, FAST, guard=False)
    assert result.status == "failed" and "connected" not in result.stdout
    lookup = sandbox._run({"main.py": "import socket\nsocket.getaddrinfo('example.com', 80)"}, FAST, guard=False)
    assert lookup.status == "failed" and lookup.error["type"] == "gaierror"


def test_runaway_loop_is_killed_as_timeout():
    result = run_python("while True:\n    pass\n", SandboxLimits(cpu_s=1, wall_s=20))
    assert result.status == "timeout"
    assert result.returncode in (-signal.SIGXCPU, -signal.SIGKILL)
    assert result.cpu_seconds >= 0.5  # it was stopped by its CPU limit, not by the wall clock


def test_sleeping_program_is_killed_at_the_wall_clock():
    result = run_python(
        "import time\nprint('start', flush=True)\ntime.sleep(600)\nprint('end')", SandboxLimits(wall_s=1)
    )
    assert result.status == "timeout"
    assert result.returncode == -signal.SIGKILL
    assert "start" in result.stdout and "end" not in result.stdout


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(4 * 1024 ** 3)", "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))"],
)
def test_memory_bomb_is_stopped(code):
    result = run_python(code, SandboxLimits(memory_mb=256, cpu_s=5, wall_s=20))
    assert result.status == "memory", (result.status, result.stderr[-500:])
    assert result.max_rss_mb < 400


@pytest.mark.parametrize(
    ("code", "event"),
    [
        ("import subprocess\nsubprocess.run(['echo', 'hi'])", "subprocess.Popen"),
        ("import os\nos.system('echo hi')", "os.system"),
        ("import os\nos.execv('/bin/echo', ['echo', 'hi'])", "os.exec"),
        ("import os\nprint(os.fork())", "os.fork"),
        ("import os\nos.posix_spawn('/bin/echo', ['echo'], {})", "os.posix_spawn"),
        ("import ctypes", "import"),
        ("import _posixsubprocess\n_posixsubprocess.fork_exec()", "sandbox"),
        ("import multiprocessing\np = multiprocessing.Process(target=print)\np.start()\np.join()", "os.fork"),
        ("import os\nos.kill(12345, 0)", "os.kill"),
        ("import resource\nresource.setrlimit(resource.RLIMIT_CPU, (100, 100))", "resource.setrlimit"),
        ("import gc\ngc.get_objects()", "gc.get_objects"),
    ],
)
def test_processes_and_escapes_are_refused(code, event):
    result = run_python(code, FAST)
    assert result.status == "failed"
    assert result.error["type"] in ("PermissionError", "ImportError", "ModuleNotFoundError"), result.stderr
    assert event in result.failure or any(b.startswith(event) for b in result.blocked), (result.failure, result.blocked)


def test_writes_stay_inside_the_run_folder(tmp_path):
    outside = tmp_path / "outside.txt"
    result = run_python(f"open({str(outside)!r}, 'w').write('x')", FAST)
    # the host's tmp folders are not mounted: inside, this path would be under the sandbox's own /tmp
    assert result.status == "failed" and result.error["type"] == "FileNotFoundError"
    assert not outside.exists()
    refused = run_python("open('/etc/sandbox-test.txt', 'w').write('x')", FAST)
    assert refused.status == "failed" and refused.error["type"] == "PermissionError"  # the audit guard
    read_only = sandbox._run({"main.py": "open('/etc/sandbox-test.txt', 'w').write('x')"}, FAST, guard=False)
    assert read_only.status == "failed" and read_only.error["type"] == "OSError"  # bwrap: read-only root
    assert "Read-only file system" in read_only.error["message"]
    inside = run_python(
        "import os, shutil, tempfile\n"
        "open('local.txt', 'w').write('ok')\n"
        "d = tempfile.mkdtemp()\n"
        "open(os.path.join(d, 'f'), 'w').write('x')\n"
        "shutil.rmtree(d)\n"
        "print(open('local.txt').read(), d.startswith(os.getcwd()))\n",
        FAST,
    )
    assert inside.status == "ok", inside.stderr
    assert inside.stdout.split() == ["ok", "True"]


def test_run_folder_is_private_and_environment_is_cleared(monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "do-not-leak")
    name = f"left-behind-{os.getpid()}.txt"
    code = (
        "import os, json\n"
        f"open({name!r}, 'w').write('x')\n"
        "os.makedirs('sub/dir')\n"
        "print(json.dumps({'cwd': os.getcwd(), 'env': dict(os.environ), 'files': sorted(os.listdir('.'))}))\n"
    )
    result = run_python(code, FAST)
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert seen["cwd"] == "/tmp" and name in seen["files"]
    assert not os.path.exists(os.path.join("/tmp", name))  # the sandbox's /tmp is its own tmpfs
    again = run_python("import os\nprint(sorted(os.listdir('.')))", FAST)
    assert again.status == "ok" and name not in again.stdout  # and a fresh one every run
    assert "SANDBOX_TEST_SECRET" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE", "PWD"}
    assert seen["env"]["HOME"] == seen["env"]["TMPDIR"] == "/tmp"


def test_tests_pass_and_fail_are_told_apart():
    solution = "def add(a, b):\n    return a + b\n"
    passed = run_tests(solution, "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n", FAST)
    assert passed.status == "ok" and passed.passed, passed.stderr
    failed = run_tests(solution, "assert add(1, 2) == 3\nassert add(2, 2) == 5\n", FAST)
    assert not failed.passed and failed.status == "failed"
    assert failed.error["type"] == "AssertionError"
    assert failed.error["file"] == "tests.py" and failed.error["line"] == 2
    assert "add(2, 2) == 5" in failed.failure
    with_message = run_tests(solution, "assert add(2, 2) == 5, 'two and two'\n", FAST)
    assert with_message.error["message"] == "two and two"


def test_syntax_errors_and_early_exits_do_not_pass():
    tests = "assert add(1, 2) == 3\n"
    broken = run_tests("def add(a, b)\n    return a + b\n", tests, FAST)
    assert broken.status == "syntax_error" and broken.error["file"] == "solution.py"
    # a solution that ends the process before the tests run must not pass
    for cheat in ("import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n"):
        result = run_tests(cheat, "assert False\n", FAST)
        assert not result.passed, cheat
    # a forged verdict file does not count either
    forged = (
        "import json, os\njson.dump({'token': 'x', 'error': None}, open('_sandbox_result.json', 'w'))\nos._exit(0)\n"
    )
    assert not run_tests(forged, "assert False\n", FAST).passed
    # nor one written to every descriptor the program holds (the report pipe among them) with a guessed token
    forged_line = (
        "import json, os\n"
        "line = 'verdict ' + json.dumps({'token': '0' * 32, 'error': None}) + '\\n'\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n"
        "        os.write(fd, line.encode())\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
    )
    cheated = run_tests(forged_line, "assert False\n", FAST)
    assert not cheated.passed and cheated.error["type"] == "EarlyExit"
    # unittest style tests run too
    unit = (
        "import unittest\n"
        "class T(unittest.TestCase):\n"
        "    def test_add(self):\n"
        "        self.assertEqual(add(2, 3), {})\n"
        "unittest.main()\n"
    )
    assert run_tests("def add(a, b):\n    return a + b\n", unit.format(5), FAST).passed
    assert not run_tests("def add(a, b):\n    return a + b\n", unit.format(6), FAST).passed


def test_output_is_cut():
    result = run_python("for i in range(20000):\n    print('line', i)\n", SandboxLimits(output_chars=1000))
    assert result.status == "ok"
    assert len(result.stdout) < 1200 and "characters cut" in result.stdout
    assert result.stdout.startswith("line 0") and result.stdout.rstrip().endswith("line 19999")
    flood = run_python("while True:\n    print('y' * 1000)\n", SandboxLimits(file_mb=1, output_chars=500))
    assert flood.status == "output_limit"


def test_run_many_keeps_order():
    jobs = [f"print({i} * {i})" for i in range(5)] + [("def f():\n    return 1\n", "assert f() == 1\n")]
    results = run_many(jobs, FAST, workers=2)
    assert [r.stdout.strip() for r in results[:5]] == [str(i * i) for i in range(5)]
    assert results[5].passed


def test_cli_prints_json(tmp_path):
    prog = tmp_path / "prog.py"
    prog.write_text("print('from the sandbox')\n")
    out = subprocess.run(
        [sys.executable, "-m", "synth.sandbox", str(prog), "--cpu-s", "2"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["status"] == "ok" and data["stdout"] == "from the sandbox\n"
    assert data["isolation"] == "bwrap+audit"
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nsocket.getaddrinfo('example.com', 80)\n")
    out = subprocess.run(
        [sys.executable, "-m", "synth.sandbox", str(bad)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["status"] == "failed"


def test_limits_are_set_in_the_child():
    limits = SandboxLimits(cpu_s=3, memory_mb=300, file_mb=2, nofile=40, nproc=50)
    names = ["RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_NPROC", "RLIMIT_CORE"]
    code = f"import json, resource\nprint(json.dumps({{n: resource.getrlimit(getattr(resource, n)) for n in {names}}}))"
    result = run_python(code, limits)
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert seen["RLIMIT_CPU"] == [3, 4]
    assert seen["RLIMIT_AS"] == [300 << 20] * 2 and seen["RLIMIT_FSIZE"] == [2 << 20] * 2
    assert seen["RLIMIT_NOFILE"] == [40, 40] and seen["RLIMIT_NPROC"] == [50, 50] and seen["RLIMIT_CORE"] == [0, 0]
    big = run_python("open('big.bin', 'wb').write(b'x' * (3 << 20))", limits)
    assert big.status == "output_limit"


def test_nproc_limit_stops_forks_without_the_guard():
    code = "import os\ntry:\n    pid = os.fork()\nexcept OSError as exc:\n    print('refused', exc.errno)\nelse:\n"
    code += "    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n    print('forked')\n"
    result = sandbox._run({"main.py": code}, SandboxLimits(nproc=1), guard=False)
    assert result.stdout.split()[:1] == ["refused"], (result.stdout, result.stderr)
    allowed = sandbox._run({"main.py": code}, SandboxLimits(nproc=8), guard=False)
    assert allowed.stdout.split() == ["forked"], (allowed.stdout, allowed.stderr)  # so the check above can fail


def test_runs_as_an_unprivileged_user():
    code = "import os\nprint(os.getuid(), os.getgid(), os.getgroups(), os.getpid())\n"
    code += "print(open('/proc/self/status').read())"
    result = run_python(code, FAST)
    assert result.status == "ok", result.stderr
    first, status = result.stdout.split("\n", 1)
    assert first == "65534 65534 [] 1"  # nobody inside, PID 1 of its own PID namespace
    assert "CapEff:\t0000000000000000" in status
    assert result.user == ("nobody" if os.geteuid() == 0 else str(os.geteuid()))


def test_missing_bwrap_refuses_to_run(monkeypatch):
    monkeypatch.setattr(bubblewrap, "_probes", {})
    monkeypatch.setattr(bubblewrap.shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_python("print('never runs')", FAST)
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_many(["print(1)", "print(2)"], FAST, workers=2)
    assert not sandbox.sandbox_available()
    with pytest.raises(SandboxUnavailable):
        sandbox.require_sandbox()


def test_bwrap_without_namespaces_refuses_to_run(monkeypatch):
    folder = Path(tempfile.mkdtemp(prefix="fake-bwrap-"))  # pytest's tmp_path is private; nobody must run this
    folder.chmod(0o755)
    fake = folder / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setattr(bubblewrap, "_probes", {})
    monkeypatch.setattr(bubblewrap.shutil, "which", lambda *args, **kwargs: str(fake))
    try:
        with pytest.raises(SandboxUnavailable) as caught:
            run_tests("def f():\n    return 1\n", "assert f() == 1\n", FAST)
    finally:
        shutil.rmtree(folder)
    assert "No permissions to creating new namespace" in str(caught.value)
    assert "apt-get install bubblewrap" in str(caught.value)


def test_a_sandbox_that_fails_to_start_is_an_error_not_a_verdict(monkeypatch):
    real = sandbox.bwrap_argv
    monkeypatch.setattr(sandbox, "bwrap_argv", lambda *args: [real(*args)[0], "--no-such-option", *real(*args)[1:]])
    result = run_python("print('never runs')", FAST)
    assert result.status == "error" and not result.passed
    assert "bwrap" in result.stderr


def test_code_stage_stops_before_the_teacher_without_bwrap(monkeypatch, tmp_path):
    from synth.llm.base import Generator
    from synth.sft.code_execution import CodeConfig, run_code

    class Teacher(Generator):
        backend, model_id = "recording", "recording-teacher"

        def __init__(self) -> None:
            self.asked = 0

        def generate(self, requests):
            self.asked += len(requests)
            raise AssertionError("the teacher was asked although the sandbox cannot run its code")

    monkeypatch.setattr(bubblewrap, "_probes", {})
    monkeypatch.setattr(bubblewrap.shutil, "which", lambda *args, **kwargs: None)
    teacher = Teacher()
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        run_code(teacher, str(tmp_path / "code"), CodeConfig(task_names=("fizzbuzz",), chunk_size=4))
    assert teacher.asked == 0
