"""Whether and how bubblewrap isolates a program here: the probe (run once, cached), the mounts and the ``bwrap``
argument list ``synth.sandbox`` runs every program under."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass
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
class Runtime:
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


def as_user(uid: int | None) -> dict[str, Any]:
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


def bwrap_argv(runtime: Runtime, tmpfs_mb: int) -> list[str]:
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


def _probe() -> Runtime:
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
        runtime = Runtime(bwrap, python, binds, host_uid)
        argv = [*bwrap_argv(runtime, 1), python, "-I", "-S", "-B", "-c", code]
        try:
            out = subprocess.run(
                argv, capture_output=True, text=True, timeout=30, env=dict(BASE_ENV), cwd="/", **as_user(host_uid)
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


def probe_runtime() -> Runtime:
    """Probed once per process when it works; a failure is probed again next time (bwrap may be installed since)."""
    with _probe_lock:
        if "runtime" not in _probes:
            _probes["runtime"] = _probe()
        return _probes["runtime"]


def require_sandbox() -> str:
    """The isolation runs get (``bwrap+audit``); raises ``SandboxUnavailable`` when bubblewrap cannot run here."""
    probe_runtime()
    return ISOLATION


def sandbox_available() -> bool:
    """Whether generated code can run here (bubblewrap installed and able to create its namespaces)."""
    try:
        probe_runtime()
    except SandboxUnavailable:
        return False
    return True
