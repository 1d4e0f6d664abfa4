"""Escape suite for synth.sandbox: what generated code would try in order to hurt the host.

Every technique runs three ways, each its own test id:

- ``<technique>-sandbox``: ``run_python`` as the pipeline runs code (bubblewrap plus the audit guard);
- ``<technique>-bwrap_alone``: the audit guard switched off, so bubblewrap has to hold on its own;
- ``<technique>-outside``: the same program as a plain ``python -c`` subprocess in a temporary folder (the
  negative control): there it must succeed, so the sandboxed runs cannot pass by accident.

Inside, the attack must fail and the host must be unchanged: the target file's content, the victim file, the
folder the test made, no new files named after the test in the host's /tmp, home, /root or /dev/shm, no
connection to the test's TCP server on 127.0.0.1, the test's helper process alive. The host folder and its files
are world-writable, so only the isolation (not file permissions) keeps the sandbox's ``nobody`` out.
Resource bombs are bounded: they stop by themselves at a few times the sandbox's limit.

    .venv/bin/python -m pytest -q tests/test_sandbox_escape.py
"""

from __future__ import annotations

import os
import re
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from synth import sandbox
from synth.sandbox import SandboxLimits

LIMITS = SandboxLimits(cpu_s=5, wall_s=20, memory_mb=128, file_mb=1, tmpfs_mb=8, nproc=16)
ORIGINAL = "original content\n"
FORK_CAP = 3 * LIMITS.nproc  # a bomb that stops by itself here: far above the sandbox's limit, harmless outside
MEMORY_CAP_MB = 4 * LIMITS.memory_mb
OUTPUT_CAP_MB = 4 * LIMITS.file_mb
DISK_CAP_MB = 4 * LIMITS.tmpfs_mb


@dataclass
class Host:
    """What the attacks aim at on the host."""

    dir: Path
    """A folder the test made under the host's tmp, mode 0777."""
    target: Path
    """A file (0666) holding ORIGINAL that the attacks try to change."""
    victim: Path
    """A file (0666) the attacks try to delete."""
    secret_file: Path
    """A file (0644) holding ``secret``."""
    secret: str
    tag: str
    """Prefix of the file names attacks create in /tmp, $HOME, /root, /dev/shm."""
    home: str
    port: int
    helper: subprocess.Popen
    """A host process started with QWEN2_TEST_SECRET=secret in its environment."""
    server: socket.socket
    connections: int = 0

    def accept_all(self) -> int:
        while True:
            try:
                conn, _ = self.server.accept()
            except BlockingIOError:
                return self.connections
            conn.close()
            self.connections += 1

    def tagged(self) -> list[str]:
        found = []
        for folder in {tempfile.gettempdir(), "/tmp", self.home, "/root", "/dev/shm"}:
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            found += [os.path.join(folder, n) for n in names if n.startswith(self.tag)]
        return sorted(found)

    def state(self) -> dict:
        return {
            "target": self.target.read_text() if self.target.exists() else None,
            "victim": self.victim.exists(),
            "dir": sorted(os.listdir(self.dir)),
            "tagged": self.tagged(),
            "helper_alive": self.helper.poll() is None,
            "connections": self.accept_all(),
        }


@pytest.fixture()
def host(monkeypatch):
    secret = "s3cret-" + secrets.token_hex(12)
    tag = "qwen2-sandbox-escape-" + secrets.token_hex(6)
    folder = Path(tempfile.mkdtemp(prefix=tag + "-dir-"))
    folder.chmod(0o777)
    target, victim, secret_file = folder / "target.txt", folder / "victim.txt", folder / "secret.txt"
    for path, text, mode in ((target, ORIGINAL, 0o666), (victim, "victim\n", 0o666), (secret_file, secret, 0o644)):
        path.write_text(text)
        path.chmod(mode)
    monkeypatch.setenv("QWEN2_TEST_SECRET", secret)  # the parent's environment: run_python must not pass it on
    helper = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE, env=dict(os.environ)
    )
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    home = os.path.expanduser("~")
    state = Host(folder, target, victim, secret_file, secret, tag, home, server.getsockname()[1], helper, server)
    yield state
    server.close()
    if helper.poll() is None:
        helper.stdin.close()
        helper.wait(timeout=10)
    for path in state.tagged():  # what a negative control created
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def _count(pattern: str, out: str) -> int:
    found = re.findall(pattern, out)
    return int(found[-1]) if found else 0


@dataclass(frozen=True)
class Technique:
    name: str
    code: Callable[[Host], str]
    escaped: Callable[[Host, str], bool]
    """Whether the attack worked, judged on the host (``out``: the program's stdout and stderr)."""


def _changed(h: Host) -> bool:
    return not h.target.exists() or h.target.read_text() != ORIGINAL


TECHNIQUES = [
    Technique(
        "hardlink_outside_file_then_append",
        lambda h: f"import os\nos.link({str(h.target)!r}, 'link')\nopen('link', 'a').write('PWNED')\n",
        lambda h, out: _changed(h),
    ),
    Technique(
        "symlink_to_outside_file_then_write",
        lambda h: f"import os\nos.symlink({str(h.target)!r}, 'link')\nopen('link', 'w').write('PWNED')\n",
        lambda h, out: _changed(h),
    ),
    Technique(
        "remove_outside_file",
        lambda h: f"import os\nos.remove({str(h.victim)!r})\n",
        lambda h, out: not h.victim.exists(),
    ),
    Technique(
        "sqlite3_creates_files_outside",
        lambda h: (
            "import sqlite3\n"
            f"for path in ({str(h.dir / 'evil.db')!r}, '/tmp/{h.tag}.db'):\n"
            "    try:\n"
            "        db = sqlite3.connect(path)\n"
            "        db.execute('create table t (x)')\n"
            "        db.commit()\n"
            "        db.close()\n"
            "    except Exception as exc:\n"
            "        print('refused', path, exc)\n"
        ),
        lambda h, out: (h.dir / "evil.db").exists() or os.path.exists(f"/tmp/{h.tag}.db"),
    ),
    Technique(
        "dbm_creates_files_outside",
        lambda h: (
            "import dbm, dbm.dumb\n"
            f"for opener, path in ((dbm.open, {str(h.dir / 'evil-dbm')!r}), (dbm.dumb.open, '/tmp/{h.tag}-dbm')):\n"
            "    try:\n"
            "        db = opener(path, 'c')\n"
            "        db[b'key'] = b'value'\n"
            "        db.close()\n"
            "    except Exception as exc:\n"
            "        print('refused', path, exc)\n"
        ),
        lambda h, out: (
            any(n.startswith("evil-dbm") for n in os.listdir(h.dir))
            or any(os.path.basename(p).startswith(h.tag + "-dbm") for p in h.tagged())
        ),
    ),
    Technique(
        "read_etc_passwd",
        lambda h: "print(open('/etc/passwd').read())\n",
        lambda h, out: re.search(r"^root:", out, re.M) is not None,
    ),
    Technique(
        "read_secret_file_in_host_tmp",
        lambda h: f"print(open({str(h.secret_file)!r}).read())\n",
        lambda h, out: h.secret in out,
    ),
    Technique(
        "write_into_home_and_root",
        lambda h: (
            "import os\n"
            f"for path in ({h.home + '/' + h.tag + '-home'!r}, '/root/{h.tag}-root',\n"
            f"             os.path.expanduser('~/{h.tag}-tilde')):\n"
            "    try:\n"
            "        open(path, 'w').write('PWNED')\n"
            "    except OSError as exc:\n"
            "        print('refused', path, exc)\n"
        ),
        lambda h, out: any(os.path.dirname(p) in (h.home, "/root") for p in h.tagged()),
    ),
    Technique(
        "write_dev_shm",
        lambda h: f"open('/dev/shm/{h.tag}-shm', 'w').write('PWNED')\n",
        lambda h, out: os.path.exists(f"/dev/shm/{h.tag}-shm"),
    ),
    Technique(
        "proc_self_root_and_proc_1_root",
        lambda h: (
            "found = []\n"
            f"for proc in ('/proc/self/root', '/proc/1/root', '/proc/{h.helper.pid}/root'):\n"
            "    try:\n"
            f"        found.append(open(proc + {str(h.secret_file)!r}).read())\n"
            f"        open(proc + {str(h.target)!r}, 'a').write('PWNED')\n"
            "    except OSError as exc:\n"
            "        print('refused', proc, exc)\n"
            "print(found)\n"
        ),
        lambda h, out: h.secret in out or _changed(h),
    ),
    Technique(
        "proc_environ_of_pid_1_parent_and_host_processes",
        lambda h: (
            "import os\n"
            f"pids = ['1', str(os.getppid()), '{os.getpid()}', '{h.helper.pid}', 'self']\n"
            "pids += [p for p in os.listdir('/proc') if p.isdigit()]\n"
            "for pid in pids:\n"
            "    try:\n"
            "        env = open(f'/proc/{pid}/environ', 'rb').read().split(b'\\0')\n"
            "    except OSError as exc:\n"
            "        continue\n"
            "    print(pid, [v.decode() for v in env if v.startswith(b'QWEN2_TEST_SECRET=')])\n"
        ),
        lambda h, out: h.secret in out,
    ),
    Technique(
        "parent_environment_secret",
        lambda h: "import os\nprint(os.environ.get('QWEN2_TEST_SECRET'), dict(os.environ))\n",
        lambda h, out: h.secret in out,
    ),
    Technique(
        "proc_self_mem_write_then_outside_file",
        # /proc/self/mem writes are how code would switch off an in-process guard; then it goes for the host
        lambda h: (
            "import struct\n"
            "buf = bytearray(b'AAAAAAAA')\n"
            "with open('/proc/self/mem', 'r+b', buffering=0) as mem:\n"
            "    mem.seek(id(buf) + 32)  # PyByteArrayObject.ob_bytes\n"
            "    data = struct.unpack('P', mem.read(8))[0]\n"
            "    mem.seek(data)\n"
            "    mem.write(b'PWNED')\n"
            "print('MEMORY-WRITE' if bytes(buf) == b'PWNEDAAA' else 'no memory write')\n"
            f"open({str(h.target)!r}, 'a').write('PWNED')\n"
        ),
        lambda h, out: _changed(h),
    ),
    Technique(
        "ctypes_libc_open_unlink_syscall",
        lambda h: (
            "import ctypes, os, platform\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"fd = libc.open({str(h.target)!r}.encode(), os.O_WRONLY | os.O_APPEND)\n"
            "print('open', fd)\n"
            "if fd >= 0:\n"
            "    libc.write(fd, b'PWNED', 5)\n"
            "    libc.close(fd)\n"
            f"print('unlink', libc.unlink({str(h.victim)!r}.encode()))\n"
            "SYS_openat = {'x86_64': 257, 'aarch64': 56}.get(platform.machine())\n"
            "if SYS_openat:\n"
            f"    fd = libc.syscall(SYS_openat, -100, {str(h.target)!r}.encode(), os.O_WRONLY | os.O_APPEND)\n"
            "    print('syscall openat', fd)\n"
            "    if fd >= 0:\n"
            "        os.write(fd, b'PWNED')\n"
        ),
        lambda h, out: _changed(h) or not h.victim.exists(),
    ),
    Technique(
        "nested_user_namespace",  # root in a new user namespace is the usual first step of a kernel exploit
        lambda h: (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "rc = libc.unshare(0x10000000)  # CLONE_NEWUSER\n"
            "print('UNSHARED', rc, os.strerror(ctypes.get_errno()))\n"
        ),
        lambda h, out: "UNSHARED 0" in out,
    ),
    Technique(
        "kill_host_process",
        lambda h: f"import os, signal\nos.kill({h.helper.pid}, signal.SIGKILL)\n",
        lambda h, out: h.helper.poll() is not None,
    ),
    Technique(
        "socket_connect_to_127_0_0_1",
        lambda h: (
            "import socket\n"
            f"s = socket.create_connection(('127.0.0.1', {h.port}), timeout=3)\n"
            "s.sendall(b'hello')\n"
            "print('connected')\n"
        ),
        lambda h, out: h.accept_all() > 0,
    ),
    Technique(
        "fork_bomb",
        lambda h: (
            "import os\n"
            "r, w = os.pipe()\n"
            "n = 0\n"
            "try:\n"
            f"    while n < {FORK_CAP}:\n"
            "        if os.fork() == 0:\n"
            "            os.close(w)\n"
            "            os.read(r, 1)  # until the bomb's parent closes its end (or dies)\n"
            "            os._exit(0)\n"
            "        n += 1\n"
            "finally:\n"
            "    print('FORKED', n, flush=True)\n"
            "    os.close(w)\n"
            "    for _ in range(n):\n"
            "        os.wait()\n"
        ),
        lambda h, out: _count(r"FORKED (\d+)", out) >= FORK_CAP,
    ),
    Technique(
        "memory_bomb",
        lambda h: (
            "chunks = []\n"
            "try:\n"
            f"    while len(chunks) * 16 < {MEMORY_CAP_MB}:\n"
            "        chunks.append(bytearray(16 << 20))\n"
            "finally:\n"
            "    print('ALLOCATED_MB', len(chunks) * 16, flush=True)\n"
        ),
        lambda h, out: _count(r"ALLOCATED_MB (\d+)", out) >= MEMORY_CAP_MB,
    ),
    Technique(
        "infinite_output",
        lambda h: (
            "import sys\n"
            "chunk = 'y' * 65535 + '\\n'\n"
            f"for _ in range({OUTPUT_CAP_MB} * 16):\n"
            "    sys.stdout.write(chunk)\n"
            "sys.stdout.flush()\n"
            "print('ALL-WRITTEN')\n"
        ),
        lambda h, out: "ALL-WRITTEN" in out,
    ),
    Technique(
        "fill_the_disk",
        lambda h: (
            "n = 0\n"
            "try:\n"
            f"    while n < {DISK_CAP_MB}:\n"
            "        with open(f'fill-{n}.bin', 'wb') as f:\n"
            "            f.write(b'x' * (1 << 20))\n"
            "        n += 1\n"
            "finally:\n"
            "    print('FILLED_MB', n, flush=True)\n"
        ),
        lambda h, out: _count(r"FILLED_MB (\d+)", out) >= DISK_CAP_MB,
    ),
]

STARTED = "print('STARTED', flush=True)\n"


def _outside_limits() -> None:
    # the bombs stop by themselves; this only keeps a broken one from taking the host down
    resource.setrlimit(resource.RLIMIT_AS, ((MEMORY_CAP_MB + 1024) << 20,) * 2)


@pytest.mark.parametrize("mode", ["sandbox", "bwrap_alone", "outside"])
@pytest.mark.parametrize("technique", TECHNIQUES, ids=[t.name for t in TECHNIQUES])
def test_escape(technique: Technique, mode: str, host: Host):
    code = STARTED + technique.code(host)
    before = host.state()
    if mode == "outside":
        with tempfile.TemporaryDirectory() as cwd:
            out = subprocess.run(
                [sys.executable, "-c", code],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=120,
                preexec_fn=_outside_limits,
            )
        output = out.stdout + out.stderr
        assert "STARTED" in out.stdout, output[-2000:]
        assert technique.escaped(host, output), f"the negative control did not work: {output[-2000:]}"
        return
    result = sandbox._run({"main.py": code}, LIMITS, guard=mode == "sandbox")
    output = result.stdout + result.stderr
    assert result.status != "error" and "STARTED" in result.stdout, (result.status, output[-2000:])
    assert result.isolation == ("bwrap+audit" if mode == "sandbox" else "bwrap")
    assert not technique.escaped(host, output), output[-2000:]
    assert host.state() == before
