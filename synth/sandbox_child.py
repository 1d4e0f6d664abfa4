"""The code that runs inside the sandbox before the user's program (``synth.sandbox`` passes it to ``python -c``):
files from stdin, the limits, the audit guard, then the user's files; the host side is ``synth.sandbox``."""

# Runs in the child before any user code: files from stdin, limits, the audit guard, then the user's files in one
# __main__ namespace. Everything the hook uses is bound in its closure (builtins and module attributes can be
# replaced by user code), and no frame on the stack while user code runs refers to the hook. The token lives only
# in the closure of ``finish``: it stops early exits and forged verdicts from passing, not code that walks frames
# on purpose. Lines on the report pipe: "started", "event <refused call>", "verdict <json>".
BOOTSTRAP = r"""
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
