"""Tests of synth.sandbox: untrusted Python runs without network, within limits, in a folder that disappears.

The network tests start a real TCP server on 127.0.0.1 in this process: sandboxed code that connects must fail and
the server must see no connection. A control run with every layer off connects, so the checks can fail.

    .venv/bin/python -m pytest tests/test_synth_sandbox.py -q
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from synth import sandbox
from synth.sandbox import SandboxLimits, network_namespace_available, run_many, run_python, run_tests

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


def test_control_run_without_any_layer_reaches_the_server(server):
    port, accepted = server
    result = sandbox._run({"main.py": connect_code(port)}, FAST, "audit", guard=False)
    assert result.isolation == "none"
    assert result.status == "ok", result.stderr
    assert "connected" in result.stdout
    assert accepted() == 1


@pytest.mark.parametrize("isolation", ["auto", "audit"])
def test_network_is_blocked(server, isolation):
    port, accepted = server
    result = run_python(connect_code(port), FAST, isolation=isolation)
    assert result.status == "failed"
    assert "connected" not in result.stdout
    assert result.error["type"] == "PermissionError"
    assert any(b.startswith(("socket.", "socket.__new__")) for b in result.blocked), result.blocked
    expected = "netns+audit" if isolation == "auto" and network_namespace_available() else "audit"
    assert result.isolation == expected
    assert accepted() == 0


def test_network_namespace_alone_blocks(server):
    if not network_namespace_available():
        pytest.skip("unshare --user --net does not work on this machine")
    port, accepted = server
    result = sandbox._run({"main.py": connect_code(port)}, FAST, "netns", guard=False)
    assert result.isolation == "netns"
    assert result.status == "failed"
    assert result.error["type"] in ("OSError", "ConnectionRefusedError", "TimeoutError")
    assert accepted() == 0
    listed = sandbox._run(
        {"main.py": "import socket\nprint(sorted(n for _, n in socket.if_nameindex()))"}, FAST, "netns", guard=False
    )
    assert listed.stdout.strip() == "['lo']"


@pytest.mark.parametrize("isolation", ["auto", "audit"])
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
def test_dns_and_outside_addresses_fail(code, isolation):
    result = run_python(code, FAST, isolation=isolation)
    assert result.status == "failed"
    assert "connected" not in result.stdout and "sent" not in result.stdout
    assert result.blocked


def test_outside_address_fails_in_the_namespace_alone():
    if not network_namespace_available():
        pytest.skip("unshare --user --net does not work on this machine")
    code = "import socket\ns = socket.create_connection(('1.1.1.1', 53), timeout=3)\nprint('connected')"
    result = sandbox._run({"main.py": code}, FAST, "netns", guard=False)
    assert result.status == "failed" and "connected" not in result.stdout
    lookup = sandbox._run(
        {"main.py": "import socket\nsocket.getaddrinfo('example.com', 80)"}, FAST, "netns", guard=False
    )
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
        ("import os\nos.kill(1, 0)", "os.kill"),
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
    assert result.status == "failed" and result.error["type"] == "PermissionError"
    assert not outside.exists()
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


def test_temp_dir_is_removed_and_environment_is_cleared(monkeypatch):
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "do-not-leak")
    code = (
        "import os, json\n"
        "open('left-behind.txt', 'w').write('x')\n"
        "os.makedirs('sub/dir')\n"
        "print(json.dumps({'cwd': os.getcwd(), 'env': sorted(os.environ)}))\n"
    )
    result = run_python(code, FAST)
    assert result.status == "ok", result.stderr
    seen = json.loads(result.stdout)
    assert not os.path.exists(seen["cwd"])
    assert "SANDBOX_TEST_SECRET" not in seen["env"]
    assert set(seen["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "LC_CTYPE"}


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
    assert data["isolation"] in ("netns+audit", "audit")
    bad = tmp_path / "bad.py"
    bad.write_text("import socket\nsocket.getaddrinfo('example.com', 80)\n")
    out = subprocess.run(
        [sys.executable, "-m", "synth.sandbox", str(bad), "--audit-only"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 1
    assert json.loads(out.stdout)["isolation"] == "audit"


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
    if os.geteuid() == 0 and sandbox.drop_user() is None:
        pytest.skip("the child runs as root here, which RLIMIT_NPROC does not bind")
    code = "import os\ntry:\n    pid = os.fork()\nexcept OSError as exc:\n    print('refused', exc.errno)\nelse:\n"
    code += "    if pid == 0:\n        os._exit(0)\n    os.waitpid(pid, 0)\n    print('forked')\n"
    result = sandbox._run({"main.py": code}, SandboxLimits(nproc=1), "auto", guard=False)
    assert result.stdout.split()[:1] == ["refused"], (result.stdout, result.stderr)
