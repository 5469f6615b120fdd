"""Run untrusted, model-generated Python (HumanEval/MBPP programs) in a limited subprocess.

What :func:`run_python` does for every call:

* a fresh temporary directory (deleted afterwards) that is the program's working directory,
  ``HOME`` and ``TMPDIR``; the environment is rebuilt from scratch (no proxy variables, no
  credentials inherited from the parent);
* ``python -I -B`` (isolated mode: no user site-packages, ``PYTHON*`` variables ignored);
* resource limits set with ``resource.setrlimit`` (soft = hard, so the program cannot raise
  them): ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_CORE`` = 0 and
  ``RLIMIT_NPROC`` = 0 (no new processes or threads; the kernel does not enforce it for root). The limits are set by the sandbox runner inside
  the child right before the program starts, rather than in ``preexec_fn``: ``preexec_fn`` is not
  safe when the parent has threads (the Python docs warn the child can deadlock), and
  :func:`balora.evaluation.code_eval.evaluate_samples` calls this function from a thread pool;
* a wall-clock timeout that kills the whole process group;
* a Python-level guard installed before the program runs: sockets cannot connect/bind/send,
  process-spawning functions (``os.system``, ``os.fork``, ``os.exec*``, ``subprocess.Popen``, ...)
  raise ``PermissionError``, and ``open``/``os`` file functions refuse to write, delete, rename
  or create anything outside the working directory. The idea follows OpenAI human-eval's
  ``reliability_guard``; the code here is written independently;
* stdout/stderr go to files outside the working directory (bounded by ``RLIMIT_FSIZE``), so a
  program that prints forever cannot exhaust the evaluator's memory.

**This is not a security boundary.** A Python-level guard can be bypassed (``ctypes``,
``_posixsubprocess``, ``importlib.reload`` of patched modules, reading the runner's frames, ...)
and the rlimits only bound resources. Model output is usually merely buggy, which this handles
well, but for hostile code run the whole evaluation inside a container or VM without network
access (e.g. ``docker run --network none --read-only``) in addition to this module.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Status = Literal["passed", "failed", "timeout", "error", "memory"]

_MAX_OUTPUT_CHARS = 20_000
_OUTPUT_LIMIT_BYTES = 8 * 1024 * 1024
_MEMORY_MARKER = "balora-sandbox: MemoryError"

# The runner executed by the child interpreter. It reads the success token from stdin, applies
# the limits and the guard, then executes solution.py. Kept as a string so the child needs no
# import of balora (isolated mode has the same sys.path as a bare interpreter).
_RUNNER = r'''
import builtins, io, os, resource, sys
_token = sys.stdin.readline().strip()
_root = os.path.realpath(os.getcwd())
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "solution.py"), encoding="utf-8") as _f:
    _source = _f.read()

def _limit(name, value):
    try:
        resource.setrlimit(getattr(resource, name), (value, value))
    except (ValueError, OSError, AttributeError):
        pass

_limit("RLIMIT_AS", {memory_bytes})
_limit("RLIMIT_CPU", {cpu_s})
_limit("RLIMIT_FSIZE", {fsize_bytes})
_limit("RLIMIT_CORE", 0)
_limit("RLIMIT_NPROC", {nproc})

def _inside(path):
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return p == _root or p.startswith(_root + os.sep)

def _deny(what):
    def _denied(*args, **kwargs):
        raise PermissionError("sandbox: " + what + " is disabled")
    return _denied

def _path_guard(fn, what, n_paths=1):
    def _guarded(*args, **kwargs):
        for path in args[:n_paths]:
            if not _inside(path):
                raise PermissionError("sandbox: " + what + " outside the working directory: " + repr(path))
        return fn(*args, **kwargs)
    return _guarded

_real_open = builtins.open
def _open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+") and not _inside(file):
        raise PermissionError("sandbox: writing outside the working directory: " + repr(file))
    return _real_open(file, mode, *args, **kwargs)
builtins.open = io.open = _open

_real_os_open = os.open
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _os_open(path, flags, *args, **kwargs):
    if flags & _WRITE_FLAGS and not _inside(path):
        raise PermissionError("sandbox: writing outside the working directory: " + repr(path))
    return _real_os_open(path, flags, *args, **kwargs)
os.open = _os_open

for _name in ("remove", "unlink", "rmdir", "mkdir", "makedirs", "removedirs", "truncate",
              "chmod", "chown", "lchown", "utime", "mkfifo", "mknod"):
    if hasattr(os, _name):
        setattr(os, _name, _path_guard(getattr(os, _name), "os." + _name))
for _name in ("rename", "replace", "link", "symlink"):
    if hasattr(os, _name):
        setattr(os, _name, _path_guard(getattr(os, _name), "os." + _name, n_paths=2))

for _name in ("system", "popen", "fork", "forkpty", "vfork", "kill", "killpg", "_exit", "abort",
              "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
              "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnvp", "spawnvpe",
              "posix_spawn", "posix_spawnp", "setuid", "setgid", "chroot"):
    if hasattr(os, _name):
        setattr(os, _name, _deny("os." + _name))

import subprocess as _subprocess
_subprocess.Popen = _deny("subprocess")
for _name in ("call", "check_call", "check_output", "run", "getoutput", "getstatusoutput"):
    setattr(_subprocess, _name, _deny("subprocess." + _name))

import socket as _socket
class _NoNetSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("sandbox: network access is disabled")
_socket.socket = _NoNetSocket
for _name in ("create_connection", "create_server", "socketpair", "fromfd", "getaddrinfo",
              "gethostbyname", "gethostbyname_ex", "gethostbyaddr"):
    setattr(_socket, _name, _deny("socket." + _name))

import shutil as _shutil
_shutil.rmtree = _path_guard(_shutil.rmtree, "shutil.rmtree")

sys.stdin = io.StringIO("")
_globals = {{"__name__": "__main__", "__builtins__": builtins, "__file__": "solution.py"}}
try:
    exec(compile(_source, "solution.py", "exec"), _globals)
except MemoryError:
    sys.stderr.write("\n{memory_marker}\n")
    sys.stderr.flush()
    raise SystemExit(3)
except SystemExit as _exit:
    sys.stderr.write("\nbalora-sandbox: program called exit(" + repr(_exit.code) + ")\n")
    sys.stderr.flush()
    raise SystemExit(2)
sys.stdout.flush()
sys.stderr.write("\n" + _token + "\n")
sys.stderr.flush()
'''


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    ``status`` is ``"passed"`` (ran to the end without exception), ``"failed"`` (an exception such
    as an ``AssertionError``, a guard violation or an explicit ``exit()``), ``"timeout"``
    (wall-clock or CPU limit), ``"memory"`` (``MemoryError`` under the memory limit) or
    ``"error"`` (killed by a signal, e.g. a segfault, or the sandbox itself could not run).
    """

    status: Status
    stdout: str
    stderr: str
    duration_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _clean_env(home: str) -> dict[str, str]:
    """A minimal environment: no proxies, credentials or PYTHON* variables from the parent."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": home,
        "TMPDIR": home,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _read_tail(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return text if len(text) <= _MAX_OUTPUT_CHARS else "...(truncated)...\n" + text[-_MAX_OUTPUT_CHARS:]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024,
               python: str | None = None) -> SandboxResult:
    """Execute ``code`` in a limited subprocess and report how it ended (see module docstring).

    Never raises for problems of the program itself; an unexpected failure of the sandbox
    machinery is reported as ``status="error"`` with the reason in ``stderr``.

    Args:
        code: Python source to run as ``__main__``.
        timeout_s: wall-clock limit in seconds (the CPU limit is ``ceil(timeout_s) + 1``).
        memory_mb: address-space limit of the child in MiB.
        python: interpreter to use (default: the current one).
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    if memory_mb <= 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    start = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="balora-sandbox-"))
    try:
        work = root / "work"
        work.mkdir()
        token = "balora-sandbox-ok-" + secrets.token_hex(16)
        runner = _RUNNER.format(
            memory_bytes=int(memory_mb) * 1024 * 1024,
            cpu_s=int(timeout_s) + 1 + (1 if timeout_s % 1 else 0),
            fsize_bytes=_OUTPUT_LIMIT_BYTES,
            nproc=0,
            memory_marker=_MEMORY_MARKER,
        )
        (root / "runner.py").write_text(runner, encoding="utf-8")
        (root / "solution.py").write_text(code, encoding="utf-8")
        out_path, err_path = root / "stdout.txt", root / "stderr.txt"
        with open(out_path, "wb") as out_f, open(err_path, "wb") as err_f:
            proc = subprocess.Popen(
                [python or sys.executable, "-I", "-B", str(root / "runner.py")],
                cwd=work, env=_clean_env(str(work)), stdin=subprocess.PIPE,
                stdout=out_f, stderr=err_f, start_new_session=True, close_fds=True,
            )
            timed_out = False
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                proc.wait()
            finally:
                _kill_group(proc)  # leftovers of the group, if any
        duration = time.monotonic() - start
        stdout, stderr = _read_tail(out_path), _read_tail(err_path)
        rc = proc.returncode
        last_line = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        if timed_out or rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and duration >= timeout_s):
            status: Status = "timeout"
        elif _MEMORY_MARKER in stderr or (rc and "MemoryError" in last_line):
            status = "memory"
        elif rc == 0 and stderr.rstrip().endswith(token):
            status = "passed"
        elif rc is not None and rc > 0:
            status = "failed"
        else:
            status = "error"
        if rc == -signal.SIGXFSZ:
            stderr += "\nbalora-sandbox: output/file size limit exceeded"
        elif rc is not None and rc < 0 and not timed_out:
            stderr += f"\nbalora-sandbox: killed by signal {signal.Signals(-rc).name}"
        stderr = stderr.replace(token, "").rstrip("\n")
        return SandboxResult(status, stdout, stderr, duration)
    except Exception as exc:  # noqa: BLE001 - a sandbox problem must not stop an evaluation run
        return SandboxResult("error", "", f"balora-sandbox: {type(exc).__name__}: {exc}",
                             time.monotonic() - start)
    finally:
        shutil.rmtree(root, ignore_errors=True)
