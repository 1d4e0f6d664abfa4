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

This module is the host side (limits, running, verdicts); ``synth.bubblewrap`` probes bubblewrap and builds its
argument list, and ``synth.sandbox_child`` is the bootstrap that runs inside the sandbox.

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
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from synth.bubblewrap import (
    BASE_ENV,
    ISOLATION,
    SANDBOX_ID,
    WORKDIR,
    SandboxUnavailable,
    as_user,
    bwrap_argv,
    probe_runtime,
    require_sandbox,
    sandbox_available,
)
from synth.sandbox_child import BOOTSTRAP


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
    runtime = probe_runtime()
    mode = ISOLATION if guard else "bwrap"
    user = "nobody" if runtime.host_uid == SANDBOX_ID else str(os.geteuid())
    token = secrets.token_hex(16)
    report_r, report_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    config = {"root": WORKDIR, "files": list(files), "rlimits": _rlimits(limits), "report_fd": report_w}
    config["guard"] = guard
    argv = [*bwrap_argv(runtime, limits.tmpfs_mb), runtime.python, "-I", "-S", "-B", "-X", "utf8"]
    argv += ["-c", BOOTSTRAP.replace("__CONFIG__", repr(config))]
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
                **as_user(runtime.host_uid),
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
