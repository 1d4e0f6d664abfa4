"""Run untrusted Python (a teacher's solution and tests) in a throw-away process that cannot reach the network.

Each run is a fresh ``python -I -S -B`` child (isolated mode, no site-packages: the standard library only): its
own session and process group (killed as a group at the wall clock deadline), a fresh temporary folder as working
directory (removed afterwards), an environment holding only ``PATH``, ``HOME``, ``TMPDIR`` and the locale.
Layers, outermost first:

- **network namespace** (``isolation="netns+audit"``): when ``unshare --user --map-root-user --net`` works on this
  machine (probed once per process), the child runs in a new user + network namespace whose only interface is a
  loopback that is down: no packet leaves, not even to 127.0.0.1 of the host.
- **unprivileged user**: when this process is root, the child runs as ``nobody`` (65534) with the first Python of
  this version that nobody can start (``sys.executable``, else ``/usr/bin/python3.X``); it then cannot write
  anything root owns. Where no such Python exists the child keeps our uid (``SandboxResult.user`` says which).
- **resource limits** set before the user's code runs: ``RLIMIT_CPU`` (soft = ``cpu_s``, SIGKILL one second
  later), ``RLIMIT_AS`` (``memory_mb``), ``RLIMIT_FSIZE`` (``file_mb``, stdout/stderr files included),
  ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` (counts every process and thread of the child's user, so it is a cap on the
  sandboxes' user, not per run; root outside a user namespace is exempt) and ``RLIMIT_CORE`` = 0.
- **audit guard** (always on, ``isolation="audit"`` when it is the only network barrier): a bootstrap passed with
  ``-c`` installs a ``sys.addaudithook`` hook before the user's code runs. It refuses sockets other than AF_UNIX,
  connect/bind/sendto/name lookups, ``subprocess``/``os.system``/``os.exec*``/``os.fork``/``os.posix_spawn``,
  importing ``ctypes``, signals to other processes, raising resource limits, ``gc`` object walks, and writes
  (open for writing, remove, rename, chmod ...) outside the run's folder. A refused call raises
  ``PermissionError`` and is listed in ``SandboxResult.blocked``. Audit hooks are a guard, not a security
  boundary on their own: the namespace, the user and the limits are.

The child's verdict (which file failed, exception type and message, the failing ``assert`` line) travels in a file
signed with a token the child reads from stdin before the user's code starts, so ``os._exit(0)`` in a solution
does not pass its tests.

    python -m synth.sandbox prog.py                       # run a file, print the SandboxResult as JSON
    python -m synth.sandbox prog.py --cpu-s 2 --memory-mb 256 --audit-only
    python -m synth.sandbox solution.py --tests tests.py  # run solution then tests (asserts) in one program
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

ISOLATIONS = ("auto", "netns", "audit")
RESULT_FILE = "_sandbox_result.json"
EVENTS_FILE = "_sandbox_events.log"
NOBODY = 65534
BASE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
UNSHARE_ARGS = ("--user", "--map-root-user", "--net")


@dataclass(frozen=True)
class SandboxLimits:
    """What one run may use. Defaults suit short solution + test programs on a small CPU machine."""

    cpu_s: float = 5
    """CPU seconds (RLIMIT_CPU soft limit: SIGXCPU; SIGKILL one second later)."""
    wall_s: float = 10
    """Wall-clock seconds before the process group is killed."""
    memory_mb: int = 512
    """Address space (RLIMIT_AS)."""
    file_mb: int = 16
    """Largest file the program may write (RLIMIT_FSIZE), its stdout and stderr included."""
    nofile: int = 64
    """Open file descriptors (RLIMIT_NOFILE)."""
    nproc: int = 64
    """RLIMIT_NPROC for the child's user (processes and threads of that user, all runs together)."""
    output_chars: int = 8000
    """stdout and stderr are cut to this many characters each (head and tail kept)."""

    def __post_init__(self) -> None:
        if self.cpu_s <= 0 or self.wall_s <= 0:
            raise ValueError("cpu_s and wall_s must be > 0")
        if self.memory_mb < 32 or self.file_mb < 1 or self.nofile < 16 or self.nproc < 1:
            raise ValueError(f"limits too small to start Python: {self}")


@dataclass
class SandboxResult:
    """How a sandboxed run ended."""

    status: str
    """ok | failed | syntax_error | timeout | memory | output_limit | killed | error (the sandbox could not run)."""
    returncode: int | None
    """Exit code; negative: killed by that signal."""
    stdout: str
    stderr: str
    seconds: float
    """Wall-clock seconds of the run."""
    isolation: str
    """``netns+audit`` (network namespace plus audit guard) or ``audit`` (audit guard only); ``netns`` / ``none``
    only for the layer tests of ``_run(..., guard=False)``."""
    cpu_seconds: float = 0.0
    max_rss_mb: float = 0.0
    """Peak resident memory of the program (its own high-water mark when it ended through the bootstrap)."""
    user: str = ""
    """The user the child ran as (``nobody`` when this process is root and could drop privileges)."""
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

# Runs in the child before any user code: limits, the audit guard, then the user's files in one __main__ namespace.
# Everything the hook uses is bound in its closure (builtins and module attributes can be replaced by user code),
# and no frame on the stack while user code runs refers to the hook. The token lives only in the closure of
# ``finish``: it stops early exits and stray files from passing, not code that walks frames on purpose.
_BOOTSTRAP = r"""
def _sandbox_bootstrap(cfg):
    import os, sys, resource
    token = sys.stdin.readline().strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for name, soft, hard in cfg["rlimits"]:
        try:
            resource.setrlimit(getattr(resource, name), (soft, hard))
        except (ValueError, OSError, AttributeError):
            pass
    root = cfg["root"]
    import _posixsubprocess

    def _install(root, cfg):
        events = open(os.path.join(root, cfg["events_file"]), "a", encoding="utf-8", buffering=1)
        realpath, fsdecode, getpid, getpgid = os.path.realpath, os.fsdecode, os.getpid, os.getpgid
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
            "os.link": ((1, 3),), "os.symlink": ((1, 2),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
            "os.truncate": ((0, None),), "os.utime": ((0, 3),), "os.chflags": ((0, None),),
            "os.lchflags": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
            "shutil.rmtree": ((0, 1),),
        }
        own_pid = getpid()

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
            try:
                events.write(line + "\n")
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
        _install(root, cfg)
    del _install, _posixsubprocess

    def _finisher(token, path):
        import json

        def finish(error):
            peak_kb = None
            try:  # this program's own peak memory (rusage would also count the parent's size at fork)
                with open("/proc/self/status", encoding="ascii") as f:
                    peak_kb = next((int(x.split()[1]) for x in f if x.startswith("VmHWM:")), None)
            except Exception:
                pass
            try:
                with open(path, "w", encoding="utf-8") as f:
                    json.dump({"token": token, "error": error, "peak_kb": peak_kb}, f)
            except Exception:
                pass
        return finish

    finish = _finisher(token, os.path.join(root, cfg["result_file"]))
    del token
    import traceback

    main = sys.modules["__main__"]
    g = main.__dict__
    g.pop("_sandbox_bootstrap", None)
    sys.path.append(root)
    files = cfg["files"]
    sources, codes = {}, []
    for name in files:
        with open(os.path.join(root, name), encoding="utf-8") as f:
            sources[name] = f.read()
    for name in files:
        try:
            codes.append((name, compile(sources[name], name, "exec")))
        except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
            line = getattr(exc, "lineno", None)
            message = getattr(exc, "msg", None) or str(exc)
            print(f"{name}:{line}: {type(exc).__name__}: {message}", file=sys.stderr)
            finish({"file": name, "phase": "compile", "type": type(exc).__name__, "message": message, "line": line})
            sys.stderr.flush()
            os._exit(2)
    g["__file__"] = os.path.join(root, files[0])
    sys.argv = [files[0]]
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
                if fname in sources:
                    line, where = tb.tb_lineno, fname
                    lines = sources[fname].splitlines()
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


_probe_lock = threading.RLock()
_probes: dict[str, Any] = {}


def _unshare() -> str | None:
    return shutil.which("unshare")


def _check(argv: list[str], expect: str, **popen: Any) -> bool:
    """Whether ``argv`` exits 0 printing ``expect``."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=dict(BASE_ENV), cwd="/", **popen)
    except (OSError, subprocess.SubprocessError, ValueError):
        return False
    return out.returncode == 0 and out.stdout.strip() == expect


def _interpreter() -> tuple[str, int | None]:
    """(Python to run, uid to run it as): as root, the first Python of this version that ``nobody`` can start
    (``sys.executable`` first), run as nobody; otherwise ``sys.executable`` as ourselves. Probed once."""
    with _probe_lock:
        if "interpreter" not in _probes:
            version = f"{sys.version_info.major}.{sys.version_info.minor}"
            own = sys.executable or shutil.which("python3") or "python3"
            chosen: tuple[str, int | None] = (own, None)
            if os.geteuid() == 0:
                candidates = [own]
                for path in (
                    shutil.which(f"python{version}"),
                    f"/usr/bin/python{version}",
                    f"/usr/local/bin/python{version}",
                ):
                    if path and os.path.exists(path) and path not in candidates:
                        candidates.append(path)
                code = "import os, sys; print(os.getuid(), '%d.%d' % sys.version_info[:2])"
                for path in candidates:
                    if _check([path, "-I", "-S", "-B", "-c", code], f"{NOBODY} {version}", **_as_nobody(NOBODY)):
                        chosen = (path, NOBODY)
                        break
            _probes["interpreter"] = chosen
        return _probes["interpreter"]


def _as_nobody(uid: int | None) -> dict[str, Any]:
    return {"user": uid, "group": uid, "extra_groups": []} if uid is not None else {}


def _python() -> str:
    return _interpreter()[0]


def drop_user() -> int | None:
    """The uid the child runs as: ``nobody`` (65534) when this process is root and a Python of this version starts
    as nobody (``sys.executable``, else e.g. ``/usr/bin/python3.11``), else None (the child keeps our uid)."""
    return _interpreter()[1]


def network_namespace_available() -> bool:
    """Whether ``unshare --user --map-root-user --net`` starts Python here with only a loopback interface
    (probed once per process, as the user the children run as)."""
    with _probe_lock:
        if "netns" not in _probes:
            unshare = _unshare()
            code = "import socket; print(','.join(sorted(name for _, name in socket.if_nameindex())))"
            argv = [unshare or "unshare", *UNSHARE_ARGS, "--", _python(), "-I", "-S", "-B", "-c", code]
            _probes["netns"] = bool(unshare) and _check(argv, "lo", **_as_nobody(drop_user()))
        return _probes["netns"]


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


def _clip(data: bytes, limit: int) -> str:
    text = data.decode("utf-8", errors="replace")
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n...[{len(text) - 2 * half} characters cut]...\n{text[-half:]}"


def _read(handle, limit: int) -> str:
    handle.seek(0, os.SEEK_END)
    size = handle.tell()
    budget = limit * 4  # utf-8: at most 4 bytes a character
    handle.seek(0)
    if size <= 2 * budget:
        return _clip(handle.read(), limit)
    head = handle.read(budget)
    handle.seek(size - budget)
    tail = handle.read(budget)
    return _clip(head + b"\n...\n" + tail, limit)


def _remove_tree(path: str) -> None:
    def retry(func, target, _exc):
        try:
            os.chmod(os.path.dirname(target), stat.S_IRWXU)
            os.chmod(target, stat.S_IRWXU)
        except OSError:
            pass
        func(target)

    shutil.rmtree(path, onerror=retry)


def _classify(returncode: int, timed_out: bool, cpu: float, limits: SandboxLimits, error: dict | None, stderr: str):
    memory = (error or {}).get("type") == "MemoryError" or "MemoryError" in stderr[-2000:]
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


def _run(files: dict[str, str], limits: SandboxLimits | None, isolation: str, *, guard: bool = True) -> SandboxResult:
    """Write ``files`` into a fresh folder and run them in order as one program in the sandbox.

    ``guard=False`` leaves the audit guard out (tests use it to check the other layers on their own)."""
    limits = limits or SandboxLimits()
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {isolation!r}")
    netns = isolation != "audit" and network_namespace_available()
    if isolation == "netns" and not netns:
        raise RuntimeError("a network namespace was required but `unshare --user --map-root-user --net` fails here")
    mode = ("netns+audit" if guard else "netns") if netns else ("audit" if guard else "none")
    uid = drop_user()
    user = "nobody" if uid is not None else str(os.geteuid())
    started = time.monotonic()
    root = os.path.realpath(tempfile.mkdtemp(prefix="sandbox-"))
    try:
        for name, text in files.items():
            with open(os.path.join(root, name), "w", encoding="utf-8") as f:
                f.write(text)
        if uid is not None:
            for name in [".", *files]:
                os.chown(os.path.join(root, name), uid, uid)
        token = secrets.token_hex(16)
        config = {
            "root": root,
            "files": list(files),
            "rlimits": _rlimits(limits),
            "events_file": EVENTS_FILE,
            "result_file": RESULT_FILE,
            "guard": guard,
        }
        argv = [_python(), "-I", "-S", "-B", "-X", "utf8", "-c", _BOOTSTRAP.replace("__CONFIG__", repr(config))]
        if netns:
            argv = [_unshare(), *UNSHARE_ARGS, "--", *argv]
        env = {**BASE_ENV, "HOME": root, "TMPDIR": root}
        popen = _as_nobody(uid)
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    cwd=root,
                    env=env,
                    start_new_session=True,
                    close_fds=True,
                    **popen,
                )
            except OSError as exc:
                return SandboxResult("error", None, "", f"sandbox could not start: {exc}", 0.0, mode, user=user)
            try:
                proc.stdin.write(token.encode() + b"\n")
                proc.stdin.close()
            except OSError:
                pass
            status, rusage, timed_out = _wait(proc, started + limits.wall_s)
            seconds = time.monotonic() - started
            stdout, stderr = _read(out, limits.output_chars), _read(err, limits.output_chars)
        returncode = os.waitstatus_to_exitcode(status)
        proc.returncode = returncode
        verdict = _verdict(root, token)
        error = verdict["error"] if verdict else None
        if verdict is None and returncode == 0:  # exited 0 without the bootstrap's verdict: os._exit in user code
            error = {"file": None, "phase": "run", "type": "EarlyExit", "message": "exited before finishing"}
        cpu = (rusage.ru_utime + rusage.ru_stime) if rusage else 0.0
        return SandboxResult(
            status=_classify(returncode, timed_out, cpu, limits, error, stderr),
            returncode=returncode,
            stdout=stdout,
            stderr=stderr,
            seconds=round(seconds, 3),
            isolation=mode,
            cpu_seconds=round(cpu, 3),
            max_rss_mb=_peak_mb(verdict, rusage),
            user=user,
            error=error,
            blocked=_events(root),
        )
    finally:
        _remove_tree(root)


def _wait(proc: subprocess.Popen, deadline: float):
    """Reap ``proc`` with its resource usage; kill its process group at ``deadline``."""
    delay, timed_out = 0.002, False
    while True:
        pid, status, rusage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() >= deadline:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status, rusage = os.wait4(proc.pid, 0)
            break
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    try:  # anything the program left in its group (it cannot fork, but be sure)
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return status, rusage, timed_out


def _peak_mb(verdict: dict | None, rusage) -> float:
    """The child's peak resident memory: its own VmHWM when the bootstrap reported it, else the kernel's rusage
    figure (which also counts this process's size when the child was forked from it)."""
    peak_kb = verdict.get("peak_kb") if verdict else None
    if isinstance(peak_kb, int):
        return round(peak_kb / 1024, 1)
    return round(rusage.ru_maxrss / 1024, 1) if rusage else 0.0


def _verdict(root: str, token: str) -> dict | None:
    try:
        with open(os.path.join(root, RESULT_FILE), encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("token") != token:
        return None
    return data


def _events(root: str) -> list[str]:
    try:
        with open(os.path.join(root, EVENTS_FILE), encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n") for line in f.read(1 << 16).splitlines()][:50]
    except OSError:
        return []


def run_python(code: str, limits: SandboxLimits | None = None, *, isolation: str = "auto") -> SandboxResult:
    """Run ``code`` as ``__main__`` in the sandbox. ``isolation``: ``auto`` (network namespace when available),
    ``netns`` (require it) or ``audit`` (audit guard only)."""
    return _run({"main.py": code}, limits, isolation)


def run_tests(
    solution: str, tests: str, limits: SandboxLimits | None = None, *, isolation: str = "auto"
) -> SandboxResult:
    """Run ``solution`` then ``tests`` in one ``__main__`` namespace; ``result.passed`` when both ran to the end.

    A file that does not compile gives ``syntax_error`` (neither runs); a failing ``assert`` gives ``failed`` with
    ``result.error`` = {file: "tests.py", type: "AssertionError", message (the assert's source when it has none),
    line}. The solution is also importable as ``solution``.
    """
    return _run({"solution.py": solution, "tests.py": tests}, limits, isolation)


def run_many(
    jobs: Sequence[str | tuple[str, str]],
    limits: SandboxLimits | None = None,
    *,
    workers: int | None = None,
    isolation: str = "auto",
) -> list[SandboxResult]:
    """Run programs (``str``: ``run_python``) or (solution, tests) pairs (``run_tests``) on a small thread pool;
    results in order."""

    def one(job: str | tuple[str, str]) -> SandboxResult:
        if isinstance(job, str):
            return run_python(job, limits, isolation=isolation)
        return run_tests(job[0], job[1], limits, isolation=isolation)

    if not jobs:
        return []
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
    parser.add_argument("--audit-only", action="store_true", help="no network namespace: the audit guard alone")
    args = parser.parse_args(argv)
    limits = SandboxLimits(cpu_s=args.cpu_s, wall_s=args.wall_s, memory_mb=args.memory_mb, file_mb=args.file_mb)
    isolation = "audit" if args.audit_only else "auto"
    with open(args.file, encoding="utf-8") as f:
        code = f.read()
    if args.tests:
        with open(args.tests, encoding="utf-8") as f:
            result = run_tests(code, f.read(), limits, isolation=isolation)
    else:
        result = run_python(code, limits, isolation=isolation)
    print(json.dumps(result.to_json(), ensure_ascii=False, indent=1))
    return 0 if result.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "SandboxLimits",
    "SandboxResult",
    "drop_user",
    "network_namespace_available",
    "run_many",
    "run_python",
    "run_tests",
]
