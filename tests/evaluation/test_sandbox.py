"""The code sandbox stops runaway, hostile-looking and crashing programs without harming the run."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from balora.evaluation.sandbox import SandboxResult, run_python


def test_normal_program_passes_in_its_own_directory():
    r = run_python("import os\nopen('a.txt', 'w').write('x')\nprint(open('a.txt').read(), os.getcwd() == "
                   "os.environ['HOME'], 'http_proxy' in os.environ)", timeout_s=10, memory_mb=512)
    assert r.status == "passed", r.stderr
    assert r.stdout == "x True False\n"
    assert r.passed


def test_failing_assert_and_syntax_error():
    assert run_python("assert 1 == 2", 10, 512).status == "failed"
    r = run_python("def f(:\n    pass", 10, 512)
    assert r.status == "failed" and "SyntaxError" in r.stderr


def test_infinite_loop_times_out():
    r = run_python("while True:\n    pass", timeout_s=1.0, memory_mb=512)
    assert r.status == "timeout"
    assert 1.0 <= r.duration_s < 8.0


def test_memory_bomb():
    r = run_python("x = bytearray(8 * 1024 ** 3)", timeout_s=10, memory_mb=512)
    assert r.status == "memory"
    r = run_python("x = [0] * (10 ** 9)", timeout_s=10, memory_mb=512)
    assert r.status == "memory"


@pytest.mark.parametrize("code", [
    "open({path!r}, 'w').write('escaped')",
    "import pathlib; pathlib.Path({path!r}).write_text('escaped')",
    "import os; fd = os.open({path!r}, os.O_WRONLY | os.O_CREAT); os.write(fd, b'escaped')",
    "import os; os.system('touch ' + {path!r})",
    "import subprocess; subprocess.run(['touch', {path!r}])",
    "import shutil; shutil.copy('/etc/hostname', {path!r})",
])
def test_write_outside_working_directory_is_denied(tmp_path, code):
    target = Path(tmp_path) / f"escape-{uuid.uuid4().hex}.txt"
    r = run_python(code.format(path=str(target)), timeout_s=10, memory_mb=512)
    assert r.status in ("failed", "error")
    assert "PermissionError" in r.stderr
    assert not target.exists()


def test_delete_outside_working_directory_is_denied(tmp_path):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    r = run_python(f"import os; os.remove({str(victim)!r})", 10, 512)
    assert r.status == "failed" and victim.read_text() == "keep"


@pytest.mark.parametrize("code", [
    "import socket; socket.create_connection(('127.0.0.1', 9))",
    "import socket; s = socket.socket(); s.connect(('127.0.0.1', 9))",
    "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9/')",
])
def test_network_is_blocked(code):
    r = run_python(code, timeout_s=10, memory_mb=512)
    assert r.status == "failed"
    assert "network access is disabled" in r.stderr or "is disabled" in r.stderr


def test_exit_and_segfault_do_not_pass_and_do_not_stop_the_run():
    r = run_python("import sys; sys.exit(0)", 10, 512)
    assert r.status == "failed" and "exit(0)" in r.stderr  # exiting early must not count as passing
    r = run_python("import ctypes; ctypes.string_at(0)", 10, 512)
    assert r.status == "error" and "SIGSEGV" in r.stderr
    assert run_python("print(1 + 1)", 10, 512).stdout == "2\n"  # the evaluator keeps working


def test_huge_output_is_bounded():
    r = run_python("while True:\n    print('x' * 10000)", timeout_s=10, memory_mb=512)
    assert r.status in ("failed", "error")
    assert len(r.stdout) < 50_000


def test_temp_directory_is_removed():
    r = run_python("import os; print(os.getcwd())", 10, 512)
    workdir = r.stdout.strip()
    assert workdir and not os.path.exists(workdir)


def test_bad_arguments():
    with pytest.raises(ValueError, match="timeout_s"):
        run_python("pass", timeout_s=0, memory_mb=512)
    with pytest.raises(ValueError, match="memory_mb"):
        run_python("pass", timeout_s=1, memory_mb=0)
    assert isinstance(run_python("pass", 5, 256, python="/nonexistent/python"), SandboxResult)
    assert run_python("pass", 5, 256, python="/nonexistent/python").status == "error"
