"""Run untrusted Python (a teacher's solution and tests) where it cannot touch the host.

The boundary is bubblewrap (``bwrap``, Debian/Ubuntu package ``bubblewrap``). Each run is a fresh
``python -I -S -B`` (isolated mode, standard library only) started by ``bwrap`` in new user, mount, PID, IPC, UTS,
cgroup and network namespaces:

- **filesystem**: an empty root, read-only, holding only ``/usr`` (and ``/bin``, ``/lib*`` beside it), the
  interpreter's own prefix when it lives elsewhere (e.g. ``~/.pyenv/versions/3.11.7``), ``/etc/ld.so.cache``
  (nothing else of ``/etc``: no ``passwd``), a fresh ``/proc`` of the new PID namespace and a minimal read-only
  ``/dev`` (``/dev/null`` and the like still work). The only writable place is a private tmpfs of ``tmpfs_mb`` at
  ``/tmp``: the program's working folder, ``HOME`` and ``TMPDIR``; it disappears with the run. Nothing of the
  host's ``/root``, ``/home``, working tree or data is mounted, and nothing on the host is writable.
- **users**: the program runs as uid/gid 65534 inside its user namespace, with no capabilities. When this process
  is root, ``bwrap`` itself is started as ``nobody`` (65534), so the program is ``nobody`` on the host too; the
  interpreter is then the first Python of this version that ``nobody`` can read (``sys.executable``, else
  ``/usr/bin/python3.X``). Otherwise it is this process's own (unprivileged) user.
- **network**: a new network namespace whose only interface is a loopback that is down: no packet leaves, not
  even to 127.0.0.1 of the host.
- **processes**: the program is PID 1 of a new PID namespace: no process of the host is visible, and when it
  ends (or is killed) every process it started ends with it. ``--die-with-parent`` and ``--new-session`` are set,
  and the environment is cleared (``PATH``, ``HOME``, ``TMPDIR``, locale).
- **limits** set before the user's code runs: ``RLIMIT_CPU`` (at ``cpu_s`` the bootstrap's SIGXCPU handler ends
  the program; SIGKILL one second later), ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_FSIZE`` (``file_mb``),
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (counted per user namespace, so per run) and ``RLIMIT_CORE`` = 0; stdout
  and stderr come back over pipes and the run is killed once either passes ``file_mb``; a wall-clock kill.
- **audit guard** (an extra layer, not the boundary): a bootstrap passed with ``-c`` installs a
  ``sys.addaudithook`` hook before the user's code runs. It refuses sockets other than AF_UNIX, connect/bind/
  sendto/name lookups, ``subprocess``/``os.system``/``os.exec*``/``os.fork``/``os.posix_spawn``, importing
  ``ctypes``, signals to other processes, raising resource limits, ``gc`` object walks, and writes (open for
  writing, link, remove, rename, chmod ...) outside ``/tmp``. A refused call raises ``PermissionError`` and is
  listed in ``SandboxResult.blocked``; it turns an attempt into a clear failure before the namespaces stop it.

There is no weaker mode: when ``bwrap`` is missing or cannot create its namespaces here, running code raises
``SandboxUnavailable`` (naming ``apt-get install bubblewrap``) instead of running it with less isolation.

The program's files and a random token go in over stdin; the verdict (which file failed, exception type and
message, the failing ``assert`` line) comes back over a pipe, tagged with the token, so ``os._exit(0)`` or a
forged verdict in a solution does not pass its tests.

    python -m synth.sandbox prog.py                       # run a file, print the SandboxResult as JSON
    python -m synth.sandbox prog.py --cpu-s 2 --memory-mb 256
    python -m synth.sandbox solution.py --tests tests.py  # run solution then tests (asserts) in one program
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

ISOLATION = "bwrap+audit"
"""``SandboxResult.isolation`` of every run: bubblewrap namespaces plus the audit guard."""
INSTALL_HINT = "apt-get install bubblewrap"
WORKDIR = "/tmp"
"""Inside the sandbox: the program's working folder, a private tmpfs and the only writable place."""
SANDBOX_ID = 65534
"""uid and gid of the program inside its user namespace (and of ``bwrap`` on the host when we are root)."""
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
SANDBOX_ENV = {**BASE_ENV, "HOME": WORKDIR, "TMPDIR": WORKDIR}


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot isolate a program on this machine: generated code is not run."""


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. Defaults suit short solution + test programs on a small CPU machine."""

    cpu_s: float = 5
    """CPU seconds (RLIMIT_CPU soft limit: SIGXCPU; SIGKILL one second later)."""
    wall_s: float = 10
    """Wall-clock seconds before the run is killed."""
    memory_mb: int = 512
    """Address space (RLIMIT_AS)."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE); a run whose stdout or stderr passes it is killed."""
    tmpfs_mb: int = 64
    """Size of the private tmpfs at /tmp, the only writable place: all the program's files together (they live in
    host memory, outside ``memory_mb``)."""
    nofile: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    nproc: int = 64
    """RLIMIT_NPROC: processes and threads of the sandbox's user, counted inside the run's user namespace."""
    output_chars: int = 8000
    """stdout and stderr are cut to this many characters each (head and tail kept)."""

    def __post_init__(self) -> None:
        if self.cpu_s <= 0 or self.wall_s <= 0:
            raise ValueError("cpu_s and wall_s must be > 0")
        if self.memory_mb < 32 or self.file_mb < 1 or self.tmpfs_mb < 1 or self.nofile < 16 or self.nproc < 1:
            raise ValueError(f"limits too small to start Python: {self}")


@dataclass
class SandboxResult:
    """How a sandboxed run ended."""

    status: str
    """ok | failed | syntax_error | timeout | memory | output_limit | killed | error (the sandbox did not start)."""
    returncode: int | None
    """Exit code; negative: killed by that signal."""
    stdout: str
    stderr: str
    seconds: float
    """Wall-clock seconds of the run."""
    isolation: str
    """``bwrap+audit`` (``bwrap`` only for the layer tests of ``_run(..., guard=False)``)."""
    cpu_seconds: float = 0.0
    max_rss_mb: float = 0.0
    """Peak resident memory of the program (its own high-water mark when it ended through the bootstrap)."""
    user: str = ""
    """The host user the sandbox ran as (``nobody`` when this process is root, else our uid)."""
    error: dict | None = None
    """The program's failure: {file, phase (compile/run), type, message, line} (None when it ran to the end)."""
    blocked: list[str] = field(default_factory=list)
    """Calls the audit guard refused, e.g. ``socket.connect ('127.0.0.1', 8080)``."""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    passed = ok  # run_tests: solution and tests ran to the end without an exception

    @property
    def failure(self) -> str:
        """One line on why the run did not pass ('' when it did)."""
        if self.status == "ok":
            return ""
        if self.error:
            where = f"{self.error.get('file')}:{self.error.get('line')}" if self.error.get("line") else ""
            return f"{self.error.get('type')}: {self.error.get('message')}" + (f" ({where})" if where else "")
        tail = self.stderr.strip().splitlines()[-1:] if self.stderr.strip() else []
        return f"{self.status} (returncode {self.returncode})" + (f": {tail[0][:300]}" if tail else "")

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed, "failure": self.failure}


# ------------------------------------------------------------------------------------------------ child bootstrap

# Runs in the child before any user code: files from stdin, limits, the audit guard, then the user's files in one
# __main__ namespace. Everything the hook uses is bound in its closure (builtins and module attributes can be
# replaced by user code), and no frame on the stack while user code runs refers to the hook. The token lives only
# in the closure of ``finish``: it stops early exits and forged verdicts from passing, not code that walks frames
# on purpose. Lines on the report pipe: "started", "event <refused call>", "verdict <json>".
_BOOTSTRAP = r"""
def _sandbox_bootstrap(cfg):
    import os, sys, resource, json
    report_fd = cfg["report_fd"]
    os.write(report_fd, b"started\n")
    token = sys.stdin.readline().strip()
    files = json.loads(sys.stdin.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    root = cfg["root"]
    for name, text in files.items():
        with open(os.path.join(root, name), "w", encoding="utf-8") as f:
            f.write(text)
    for name, soft, hard in cfg["rlimits"]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            pass
    import signal
    # PID 1 of a namespace ignores signals it has no handler for: end at the CPU soft limit as a default would
    signal.signal(signal.SIGXCPU, lambda *_: os._exit(128 + signal.SIGXCPU))
    import _posixsubprocess

    def _install(root, report_fd):
        realpath, fsdecode, getpid, getpgid, write = os.path.realpath, os.fsdecode, os.getpid, os.getpgid, os.write
        isdir, readlink, join = os.path.isdir, os.readlink, os.path.join
        refuse_cls, is_int, as_str, as_repr, as_tuple = PermissionError, int, str, repr, tuple
        isinst, length, exc_cls = isinstance, len, Exception
        prefix = root.rstrip("/") + "/"
        writable_dev = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        net = frozenset({
            "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
            "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr", "socket.getnameinfo",
            "socket.sethostname",
        })
        procs = frozenset({
            "os.system", "os.exec", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "subprocess.Popen",
            "os.startfile", "pty.spawn", "resource.setrlimit", "resource.prlimit", "gc.get_objects",
            "gc.get_referrers", "gc.get_referents", "os.chroot", "sys.remote_exec",
        })
        modules = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "cffi", "_cffi_backend"})
        # event: ((index of a path argument, index of its dir_fd argument or None), ...)
        path_args = {
            "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
            "os.link": ((0, 2), (1, 3)), "os.symlink": ((1, 2),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
            "os.truncate": ((0, None),), "os.utime": ((0, 3),), "os.chflags": ((0, None),),
            "os.lchflags": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
            "shutil.rmtree": ((0, 1),),
        }
        own_pid = getpid()
        reported = [0]

        def resolve(path, dir_fd):
            raw = fsdecode(path)
            if isinst(dir_fd, is_int) and dir_fd >= 0 and not raw.startswith("/"):  # -1: no dir_fd given
                raw = join(readlink("/proc/self/fd/" + as_str(dir_fd)), raw)
            return raw, realpath(raw)

        def inside(path, dir_fd=None):
            if isinst(path, is_int):
                return True
            try:
                raw, real = resolve(path, dir_fd)
            except exc_cls:
                return False
            return raw in writable_dev or real == root or real.startswith(prefix)

        def refuse(event, args):
            line = event + " " + as_repr(as_tuple(args))[:200]
            if reported[0] < 50:
                reported[0] += 1
                try:
                    write(report_fd, ("event " + line.replace("\n", " ") + "\n").encode("utf-8", "replace"))
                except exc_cls:
                    pass
            raise refuse_cls("sandbox: " + line + " is not allowed")

        def hook(event, args):
            if event in net or event in procs:
                refuse(event, args)
            elif event == "socket.__new__":
                if length(args) > 1 and args[1] not in (1, -1):  # AF_UNIX only (-1: family from a descriptor)
                    refuse(event, args[1:])
            elif event == "import":
                if as_str(args[0]).partition(".")[0] in modules:
                    refuse(event, args[:1])
            elif event == "open":
                path = args[0]
                flags = args[2] if length(args) > 2 and isinst(args[2], is_int) else 0
                if not inside(path):
                    if flags & write_flags:
                        refuse(event, args[:2])
                    try:
                        if not isinst(path, is_int) and isdir(path):  # a directory fd could serve as dir_fd
                            refuse(event, args[:2])
                    except refuse_cls:
                        raise
                    except exc_cls:
                        pass
            elif event in path_args:
                for index, fd_index in path_args[event]:
                    dir_fd = args[fd_index] if fd_index is not None and fd_index < length(args) else None
                    if index < length(args) and not inside(args[index], dir_fd):
                        refuse(event, args)
            elif event == "os.kill":
                if args[0] not in (0, own_pid):
                    refuse(event, args)
            elif event == "os.killpg":
                if args[0] not in (0, getpgid(0)):
                    refuse(event, args)

        sys.addaudithook(hook)

    def _refused(*args, **kwargs):
        raise PermissionError("sandbox: _posixsubprocess.fork_exec is not allowed")

    if cfg["guard"]:
        _posixsubprocess.fork_exec = _refused
        _install(root, report_fd)
    del _install, _posixsubprocess

    def _finisher(token, report_fd):
        dumps, write = json.dumps, os.write

        def finish(error):
            peak_kb = None
            try:  # this program's own peak memory
                with open("/proc/self/status", encoding="ascii") as f:
                    peak_kb = next((int(x.split()[1]) for x in f if x.startswith("VmHWM:")), None)
            except Exception:
                pass
            try:
                line = "verdict " + dumps({"token": token, "error": error, "peak_kb": peak_kb}) + "\n"
                write(report_fd, line.encode("utf-8", "replace"))
            except Exception:
                pass
        return finish

    finish = _finisher(token, report_fd)
    del token
    import traceback

    main = sys.modules["__main__"]
    g = main.__dict__
    g.pop("_sandbox_bootstrap", None)
    sys.path.append(root)
    names = cfg["files"]
    codes = []
    for name in names:
        try:
            codes.append((name, compile(files[name], name, "exec")))
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
            line = getattr(exc, "lineno", None)
            message = getattr(exc, "msg", None) or str(exc)
            print(f"{name}:{line}: {type(exc).__name__}: {message}", file=sys.stderr)
            finish({"file": name, "phase": "compile", "type": type(exc).__name__, "message": message, "line": line})
            sys.stderr.flush()
            os._exit(2)
    g["__file__"] = os.path.join(root, names[0])
    sys.argv = [names[0]]
    code, error = 0, None
    for index, (name, compiled) in enumerate(codes):
        try:
            exec(compiled, g)
        except SystemExit as exc:
            status = exc.code
            if index == len(codes) - 1 and status in (0, None):
                break
            code = status if isinstance(status, int) and status else 1
            if not isinstance(status, (int, type(None))):
                print(status, file=sys.stderr)
            error = {"file": name, "phase": "run", "type": "SystemExit", "message": f"exit({status!r})"}
            break
        except BaseException as exc:
            try:
                traceback.print_exc()
            except BaseException:
                pass
            line, text, where = None, "", name
            tb = exc.__traceback__
            while tb is not None:
                fname = tb.tb_frame.f_code.co_filename
                if fname in files:
                    line, where = tb.tb_lineno, fname
                    lines = files[fname].splitlines()
                    text = lines[line - 1].strip() if 0 < line <= len(lines) else ""
                tb = tb.tb_next
            try:
                message = str(exc)[:1000]
            except BaseException:
                message = ""
            if not message and isinstance(exc, AssertionError):
                message = text  # a bare `assert x == y`: its source says what failed
            error = {"file": where, "phase": "run", "type": type(exc).__name__, "message": message,
                     "line": line, "source": text[:300]}
            code = 1
            break
    finish(error)
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


_sandbox_bootstrap(__CONFIG__)
"""


# --------------------------------------------------------------------------------------------------- isolation


@dataclass(frozen=True)
class _Runtime:
    """How runs start on this machine (probed once per process)."""

    bwrap: str
    python: str
    """The interpreter, at the same path inside the sandbox as outside."""
    binds: tuple[str, ...]
    """Folders mounted read-only at the same path besides /usr (the interpreter's prefix when outside /usr)."""
    host_uid: int | None
    """uid ``bwrap`` is started as (``nobody`` when we are root); None: our own."""


_probe_lock = threading.RLock()
_probes: dict[str, Any] = {}


def _host_uid() -> int | None:
    return SANDBOX_ID if os.geteuid() == 0 else None


def _as_user(uid: int | None) -> dict[str, Any]:
    return {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}


def _interpreters() -> list[tuple[str, tuple[str, ...]]]:
    """(interpreter, read-only folders it needs besides /usr), ours first, then system Pythons of this version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = os.path.realpath(sys.base_prefix)
    own = os.path.realpath(sys.executable) if sys.executable else ""
    if not own.startswith(base + os.sep):  # e.g. a venv made with --copies: use its base installation
        own = os.path.join(base, "bin", f"python{version}")
    found: list[tuple[str, tuple[str, ...]]] = []
    for path in (own, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        real = os.path.realpath(path)
        if not os.path.isfile(real) or any(real == p for p, _ in found):
            continue
        prefix = base if real == own else os.path.dirname(os.path.dirname(real))
        binds = () if prefix == "/usr" or prefix.startswith("/usr/") else (prefix,)
        if any(_too_wide(b) for b in binds):
            continue
        found.append((real, binds))
    return found


def _too_wide(folder: str) -> bool:
    """A folder that holds the user's home or this project is never mounted, even read-only."""
    folder = folder.rstrip("/") or "/"
    if folder in ("/", "/root", "/home", "/work", "/tmp"):
        return True
    for other in (os.path.expanduser("~"), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))):
        other = os.path.realpath(other)
        if other == folder or other.startswith(folder + "/"):
            return True
    return False


def _system_mounts() -> list[str]:
    """Read-only /usr and what sits beside it: merged-/usr links as links, real folders bound."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = "/" + name
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args + ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]


def _bwrap_argv(runtime: _Runtime, tmpfs_mb: int) -> list[str]:
    # --as-pid-1: the program is the namespace's init, a direct child of bwrap, so its CPU time reaches our rusage
    argv = [runtime.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--as-pid-1", "--die-with-parent"]
    argv += ["--new-session", "--clearenv"]
    argv += ["--uid", str(SANDBOX_ID), "--gid", str(SANDBOX_ID), "--hostname", "sandbox"]
    argv += _system_mounts()
    for folder in runtime.binds:
        argv += ["--ro-bind", folder, folder]
    argv += ["--proc", "/proc", "--dev", "/dev", "--size", str(tmpfs_mb << 20), "--tmpfs", WORKDIR]
    for name, value in SANDBOX_ENV.items():
        argv += ["--setenv", name, value]
    # the root (bwrap's own tmpfs) and /dev are made read-only last: /tmp is the only writable mount
    return argv + ["--chdir", WORKDIR, "--remount-ro", "/dev", "--remount-ro", "/", "--"]


def _probe() -> _Runtime:
    bwrap = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/usr/local/bin:/bin")
    host_uid = _host_uid()
    who = "nobody" if host_uid is not None else f"uid {os.geteuid()}"
    if not bwrap:
        raise SandboxUnavailable(
            f"generated code is only run inside bubblewrap, and `bwrap` is not installed: run `{INSTALL_HINT}`"
        )
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    code = (
        "import os, sys, socket\n"
        "print(os.getuid(), '%d.%d' % sys.version_info[:2], *(name for _, name in socket.if_nameindex()))"
    )
    expect = f"{SANDBOX_ID} {version} lo"
    tried = []
    for python, binds in _interpreters():
        runtime = _Runtime(bwrap, python, binds, host_uid)
        argv = [*_bwrap_argv(runtime, 1), python, "-I", "-S", "-B", "-c", code]
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, env=dict(BASE_ENV), cwd="/", **_as_user(host_uid)
            )
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            tried.append(f"{python}: {exc}")
            continue
        if out.returncode == 0 and out.stdout.strip() == expect:
            return runtime
        tried.append(f"{python}: {(out.stderr.strip() or out.stdout.strip() or f'exit {out.returncode}')[-300:]}")
    raise SandboxUnavailable(
        f"generated code is only run inside bubblewrap, and `{bwrap}` (run as {who}) could not start Python "
        f"{version} in new namespaces here: {'; '.join(tried) or f'no python{version} found'}. Install it with "
        f"`{INSTALL_HINT}` (bubblewrap >= 0.8), allow unprivileged user namespaces for {who} "
        "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, or the AppArmor profile for "
        f"bwrap), and when running as root make a Python {version} readable by nobody (e.g. /usr/bin/python{version})"
    )


def _runtime() -> _Runtime:
    """Probed once per process when it works; a failure is probed again next time (bwrap may be installed since)."""
    with _probe_lock:
        if "runtime" not in _probes:
            _probes["runtime"] = _probe()
        return _probes["runtime"]


def require_sandbox() -> str:
    """The isolation runs get (``bwrap+audit``); raises ``SandboxUnavailable`` when bubblewrap cannot run here."""
    _runtime()
    return ISOLATION


def sandbox_available() -> bool:
    """Whether generated code can run here (bubblewrap installed and able to create its namespaces)."""
    try:
        _runtime()
    except SandboxUnavailable:
        return False
    return True


# ------------------------------------------------------------------------------------------------------ running


def _rlimits(limits: SandboxLimits) -> list[tuple[str, int, int]]:
    import resource

    cpu = max(1, int(round(limits.cpu_s)))
    wanted = [
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", limits.memory_mb << 20, limits.memory_mb << 20),
        ("RLIMIT_FSIZE", limits.file_mb << 20, limits.file_mb << 20),
        ("RLIMIT_NOFILE", limits.nofile, limits.nofile),
        ("RLIMIT_NPROC", limits.nproc, limits.nproc),
        ("RLIMIT_CORE", 0, 0),
    ]
    out = []
    for name, soft, hard in wanted:
        if not hasattr(resource, name):
            continue
        _, current_hard = resource.getrlimit(getattr(resource, name))
        if current_hard != resource.RLIM_INFINITY:  # never ask for more than we have (that would fail)
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        out.append((name, soft, hard))
    return out


class _Capture:
    """The head and tail of a stream (``keep`` bytes each) and its total size."""

    def __init__(self, keep: int) -> None:
        self.keep, self.total = keep, 0
        self.head, self.tail = bytearray(), bytearray()

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.keep - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            del self.tail[: max(0, len(self.tail) - self.keep)]

    def data(self) -> bytes:
        return (
            bytes(self.head + self.tail) if self.total <= 2 * self.keep else bytes(self.head + b"\n...\n" + self.tail)
        )


def _clip(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n...[{len(text) - 2 * half} characters cut]...\n{text[-half:]}"


def _classify(
    returncode: int, timed_out: bool, overflow: bool, cpu: float, limits: SandboxLimits, error: dict | None, stderr: str
) -> str:
    memory = (error or {}).get("type") == "MemoryError" or "MemoryError" in stderr[-2000:]
    if overflow:
        return "output_limit"
    if timed_out:
        return "timeout"
    if returncode < 0:
        sig = -returncode
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_s - 0.05):
            return "timeout"
        if sig == signal.SIGXFSZ:
            return "output_limit"
        return "memory" if memory else "killed"
    if memory:
        return "memory"
    if (error or {}).get("type") == "OSError" and "[Errno 27]" in str((error or {}).get("message")):
        return "output_limit"  # Python ignores SIGXFSZ: a write past RLIMIT_FSIZE raises EFBIG
    if error and error.get("phase") == "compile":
        return "syntax_error"
    if returncode != 0 or error:
        return "failed"
    return "ok"


def _exit_code(status: int) -> int:
    """bwrap exits with 128 + N when the program died of signal N: report that as -N, like a direct child."""
    code = os.waitstatus_to_exitcode(status)
    if 128 < code < 128 + signal.NSIG:
        return 128 - code
    return code


def _run(files: dict[str, str], limits: SandboxLimits | None = None, *, guard: bool = True) -> SandboxResult:
    """Run ``files`` (written into the sandbox's /tmp) in order as one program.

    ``guard=False`` leaves the audit guard out (tests use it to check that bubblewrap holds on its own)."""
    limits = limits or SandboxLimits()
    runtime = _runtime()
    mode = ISOLATION if guard else "bwrap"
    user = "nobody" if runtime.host_uid == SANDBOX_ID else str(os.geteuid())
    token = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    config = {"root": WORKDIR, "files": list(files), "rlimits": _rlimits(limits), "report_fd": report_w}
    config["guard"] = guard
    argv = [*_bwrap_argv(runtime, limits.tmpfs_mb), runtime.python, "-I", "-S", "-B", "-X", "utf8"]
    argv += ["-c", _BOOTSTRAP.replace("__CONFIG__", repr(config))]
    started = time.monotonic()
    try:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=out_w,
                stderr=err_w,
                cwd="/",
                env=dict(BASE_ENV),  # bwrap's own environment, which the sandbox's /proc/1/environ shows
                start_new_session=True,
                close_fds=True,
                pass_fds=(report_w,),
                **_as_user(runtime.host_uid),
            )
        except OSError as exc:
            return SandboxResult("error", None, "", f"sandbox could not start: {exc}", 0.0, mode, user=user)
        finally:
            for fd in (report_w, out_w, err_w):
                os.close(fd)
        payload = (token + "\n" + json.dumps(files)).encode("utf-8")
        threading.Thread(target=_feed, args=(proc, payload), daemon=True).start()
        keep = limits.output_chars * 4  # utf-8: at most 4 bytes a character
        captures = {out_r: _Capture(keep), err_r: _Capture(keep), report_r: _Capture(1 << 20)}
        status, rusage, timed_out, overflow = _collect(
            proc, captures, (out_r, err_r), started + limits.wall_s, limits.file_mb << 20
        )
    finally:
        for fd in (report_r, out_r, err_r):
            os.close(fd)
    seconds = time.monotonic() - started
    stdout, stderr = (
        _clip(captures[out_r].data(), limits.output_chars),
        _clip(captures[err_r].data(), limits.output_chars),
    )
    returncode = _exit_code(status)
    proc.returncode = returncode
    began, verdict, blocked = _parse_report(captures[report_r], token)
    error = verdict["error"] if verdict else None
    cpu = (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0
    if not began and not timed_out:  # bwrap failed before Python started
        status_name = "error"
    else:
        if verdict is None and returncode == 0:  # exited 0 without the bootstrap's verdict: os._exit in user code
            error = {"file": None, "phase": "run", "type": "EarlyExit", "message": "exited before finishing"}
        status_name = _classify(returncode, timed_out, overflow, cpu, limits, error, stderr)
    return SandboxResult(
        status=status_name,
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        seconds=round(seconds, 3),
        isolation=mode,
        cpu_seconds=round(cpu, 3),
        max_rss_mb=_peak_mb(verdict, rusage),
        user=user,
        error=error,
        blocked=blocked,
    )


def _feed(proc: subprocess.Popen, payload: bytes) -> None:
    """Write the token and files to the child's stdin (in a thread: a big payload must not block the deadline)."""
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except (OSError, ValueError):
        pass


def _collect(
    proc: subprocess.Popen, captures: dict[int, _Capture], capped: tuple[int, ...], deadline: float, max_output: int
):
    """Read the child's pipes until they close and reap it; kill it at ``deadline`` or once one of the ``capped``
    pipes (stdout, stderr) passes ``max_output`` bytes. Returns (wait status, rusage, timed out, output overflow)."""
    selector = selectors.DefaultSelector()
    for fd in captures:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    reaped, status, rusage = False, 0, None
    timed_out = overflow = False
    give_up = None  # after a kill (or once reaped), stop waiting for the pipes to close at this time

    def kill() -> None:
        # The program first (bwrap's only child; as PID 1 of its namespace it takes every process it started with
        # it): bwrap then reaps it and exits. Killing bwrap alone would leave the program to the host's init.
        if reaped:  # its pid may belong to someone else by now
            return
        try:
            with open(f"/proc/{proc.pid}/task/{proc.pid}/children", encoding="ascii") as f:
                children = [int(pid) for pid in f.read().split()]
        except (OSError, ValueError):
            children = []
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if not children:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap; --die-with-parent takes the program with it
            except (ProcessLookupError, PermissionError):
                pass

    try:
        while True:
            if not reaped:
                pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
                reaped = pid != 0
                if reaped and give_up is None:
                    give_up = time.monotonic() + 2
            open_fds = selector.get_map()
            if reaped and not open_fds:
                break
            now = time.monotonic()
            if give_up is None and now >= deadline:
                timed_out, give_up = True, now + 5
                kill()
            if give_up is not None and now >= give_up:
                if reaped:
                    break
                kill()
                _, status, rusage = os.wait4(proc.pid, 0)
                break
            if not open_fds:
                time.sleep(0.005)
                continue
            wait_s = 0.05 if give_up is not None else min(0.05, max(0.001, deadline - now))
            for key, _ in selector.select(timeout=wait_s):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    continue
                if not data:
                    selector.unregister(key.fd)
                    continue
                captures[key.fd].add(data)
                if key.fd in capped and captures[key.fd].total > max_output and not overflow:
                    overflow = True
                    give_up = give_up or time.monotonic() + 5
                    kill()
                    for fd in capped:  # read no more: the program blocks on a full pipe until it is gone
                        if fd in selector.get_map():
                            selector.unregister(fd)
                    break
    finally:
        selector.close()
    return status, rusage, timed_out, overflow


def _parse_report(report: _Capture, token: str) -> tuple[bool, dict | None, list[str]]:
    """(the bootstrap started, its verdict when tagged with ``token``, refused calls) from the report pipe."""
    began, verdict, blocked = False, None, []
    for line in report.data().decode("utf-8", errors="replace").split("\n"):
        if line == "started":
            began = True
        elif line.startswith("event ") and len(blocked) < 50:
            blocked.append(line[6:])
        elif line.startswith("verdict "):
            try:
                data = json.loads(line[8:])
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("token") == token:
                verdict = data
    return began, verdict, blocked


def _peak_mb(verdict: dict | None, rusage) -> float:
    """The child's peak resident memory: its own VmHWM when the bootstrap reported it, else the kernel's rusage
    figure (the largest process of the run, bwrap included)."""
    peak_kb = verdict.get("peak_kb") if verdict else None
    if isinstance(peak_kb, int):
        return round(peak_kb / 1024, 1)
    return round(rusage.ru_maxrss / 1024, 1) if rusage else 0.0


def run_python(code: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox (raises ``SandboxUnavailable`` when bubblewrap cannot run)."""
    return _run({"main.py": code}, limits)


def run_tests(solution: str, tests: str, limits: SandboxLimits | None = None) -> SandboxResult:
    """Run ``solution`` then ``tests`` in one ``__main__`` namespace; ``result.passed`` when both ran to the end.

    A file that does not compile gives ``syntax_error`` (neither runs); a failing ``assert`` gives ``failed`` with
    ``result.error`` = {file: "tests.py", type: "AssertionError", message (the assert's source when it has none),
    line}. The solution is also importable as ``solution``.
    """
    return _run({"solution.py": solution, "tests.py": tests}, limits)


def run_many(
    jobs: Sequence[str | tuple[str, str]],
    limits: SandboxLimits | None = None,
    *,
    workers: int | None = None,
) -> list[SandboxResult]:
    """Run programs (``str``: ``run_python``) or (solution, tests) pairs (``run_tests``) on a small thread pool;
    results in order."""

    def one(job: str | tuple[str, str]) -> SandboxResult:
        if isinstance(job, str):
            return run_python(job, limits)
        return run_tests(job[0], job[1], limits)

    if not jobs:
        return []
    require_sandbox()  # one clear error before any job starts
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    if workers == 1 or len(jobs) == 1:
        return [one(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(one, jobs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="Python file to run (the solution when --tests is given)")
    parser.add_argument("--tests", default=None, help="Python file of assert-based tests run after FILE")
    defaults = SandboxLimits()
    parser.add_argument("--cpu-s", type=float, default=defaults.cpu_s)
    parser.add_argument("--wall-s", type=float, default=defaults.wall_s)
    parser.add_argument("--memory-mb", type=int, default=defaults.memory_mb)
    parser.add_argument("--file-mb", type=int, default=defaults.file_mb)
    parser.add_argument("--tmpfs-mb", type=int, default=defaults.tmpfs_mb)
    args = parser.parse_args(argv)
    limits = SandboxLimits(
        cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb, file_mb=args.file_mb, tmpfs_mb=args.tmpfs_mb
    )
    with open(args.file, encoding="utf-8") as f:
        code = f.read()
    try:
        if args.tests:
            with open(args.tests, encoding="utf-8") as f:
                result = run_tests(code, f.read(), limits)
        else:
            result = run_python(code, limits)
    except SandboxUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_json(), ensure_ascii=False, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ISOLATION",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailable",
    "require_sandbox",
    "run_many",
    "run_python",
    "run_tests",
    "sandbox_available",
]
