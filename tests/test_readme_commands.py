"""Every `balora ...` command in README.md's fenced shell blocks is accepted by the real CLI, as written.

Each command is parsed by :func:`balora.cli.main.build_parser` (a missing required argument, an unknown option or a
bad choice fails). A command that has a no-side-effect mode is then run through :func:`balora.cli.main.main` in it
(``--print-config`` for `balora train`, ``--dry-run`` for the sweeps), so the command's own validation runs too:
config overrides, sweep settings. Where that validation stops at a file the command names and this checkout lacks
(a run folder, a results file, a placeholder such as ``...``), the command is checked for argument validity only.
No training runs. The extraction works on any README with fenced shell blocks.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shlex
from pathlib import Path
from typing import Iterator, Optional

import pytest

from balora.cli.main import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh", "shell-session"}
SEPARATORS = {"&&", "||", ";", "|", "&", "(", ")", "$("}
# Words a shell command may start with before the program (`for ...; do balora ...`, `time balora ...`).
PREFIXES = {"do", "then", "else", "time", "exec", "!", "{", "env", "nohup"}
HEREDOC = re.compile(r"<<-?\s*['\"]?(\w+)['\"]?")
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)")
NO_SIDE_EFFECT_FLAGS = (("print_config", "--print-config"), ("dry_run", "--dry-run"))


def shell_blocks(text: str) -> Iterator[list[str]]:
    """The lines of each fenced code block whose language is a shell."""
    fence: Optional[str] = None
    language, lines = "", []
    for line in text.splitlines():
        match = FENCE.match(line)
        if fence is None and match:
            fence, language, lines = match.group(1), match.group(2).lower(), []
        elif fence is not None and line.strip().startswith(fence[0] * len(fence)) and not line.strip(fence[0]).strip():
            if language in SHELL_LANGUAGES:
                yield lines
            fence = None
        elif fence is not None:
            lines.append(line)


def logical_lines(lines: list[str]) -> Iterator[str]:
    """Lines with backslash continuations joined, console prompts and heredoc bodies dropped."""
    pending, heredoc_end = "", None
    for raw in lines:
        if heredoc_end is not None:
            heredoc_end = None if raw.strip() == heredoc_end else heredoc_end
            continue
        line = raw[2:] if raw.startswith("$ ") else raw
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        line, pending = pending + line, ""
        match = HEREDOC.search(line)
        if match:
            heredoc_end = match.group(1)
        yield line


def balora_commands(text: str) -> list[list[str]]:
    """The arguments of every `balora ...` command (or `python -m balora[.cli.main] ...`) in the shell blocks."""
    commands = []
    for block in shell_blocks(text):
        for line in logical_lines(block):
            lexer = shlex.shlex(line, posix=True, punctuation_chars="();&|")
            lexer.whitespace_split = True
            segment: list[str] = []
            for token in [*lexer, ";"]:
                if token not in SEPARATORS and not set(token) <= set(";&|"):
                    segment.append(token)
                    continue
                args = _balora_args(segment)
                if args is not None:
                    commands.append(args)
                segment = []
    return commands


def _balora_args(words: list[str]) -> Optional[list[str]]:
    while words and (words[0] in PREFIXES or re.match(r"^\w+=", words[0])):  # VAR=value balora ...
        words = words[1:]
    if words and os.path.basename(words[0]) == "balora":
        return words[1:]
    if len(words) >= 3 and os.path.basename(words[0]).startswith("python") and words[1] == "-m" \
            and words[2] in ("balora", "balora.cli.main"):
        return words[3:]
    return None


def check(argv: list[str]) -> Optional[str]:
    """None when ``balora ARGV`` is accepted as written, else why not."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args, extra = build_parser().parse_known_args(argv)
    except SystemExit:
        return (err.getvalue().strip() or "rejected by the parser").splitlines()[-1]
    if getattr(args, "func", None) is None:
        return "names no command"
    if extra and not getattr(args, "accepts_overrides", False):
        return f"unrecognized arguments: {' '.join(extra)}"
    flag = next((flag for name, flag in NO_SIDE_EFFECT_FLAGS if hasattr(args, name)), None)
    if flag is None:
        return None
    out, err = io.StringIO(), io.StringIO()
    cwd, root = Path.cwd(), logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        os.chdir(REPO)  # the README's relative paths (configs/...) are relative to the repository
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = main([*argv, flag])
    except SystemExit as exc:
        rc = exc.code
    finally:
        os.chdir(cwd)
        root.handlers[:], root.level = handlers, level  # main() configures logging for a process of its own
    if rc == 0:
        return None
    message = err.getvalue().strip() or f"exit code {rc}"
    if any(word in message for word in _missing_paths(argv)):
        return None  # stopped at a file this checkout lacks: the arguments themselves were accepted
    return message


def _missing_paths(argv: list[str]) -> list[str]:
    """Arguments that look like file or folder names and do not exist in the repository."""
    return [a for a in argv if not a.startswith("-") and ("/" in a or "." in a) and not (REPO / a).exists()]


README_COMMANDS = balora_commands(README.read_text()) if README.is_file() else []


def test_the_readme_shows_balora_commands():
    assert README_COMMANDS, "README.md has no `balora ...` line in a fenced bash block"


@pytest.mark.parametrize("argv", README_COMMANDS, ids=[" ".join(a)[:80] for a in README_COMMANDS])
def test_readme_command_is_accepted_as_written(argv):
    problem = check(argv)
    assert problem is None, f"README.md: `balora {' '.join(argv)}` does not run as written: {problem}"


def test_the_check_refuses_what_the_cli_refuses():
    assert "--data" in check(["eval", "--task", "gsm8k", "--model", "m"])  # a required argument missing
    assert "--no-such-flag" in check(["report", "results.jsonl", "--no-such-flag"])
    assert check(["train", "--config", "configs/train_nlg_smollm2.yaml", "--train.no_such_key", "1"])
    assert check(["bench", "nlu", "--methods", "lora"]) is not None  # validation of the sweep: no --models
    assert check(["report", "no/such/results.jsonl"]) is None  # a missing file: arguments only


def test_commands_are_found_in_any_shell_block():
    text = "\n".join([
        "Some prose with balora train inline, not a command.",
        "```bash",
        "M=$(python -c 'print(1)')  # a comment naming balora demo",
        "for s in 0 1; do",
        "  OMP_NUM_THREADS=1 balora bench nlu --models $M \\",
        "      --shard $s/2 &",
        "done; wait",
        "bash scripts/setup.sh && .venv/bin/balora demo --quick",
        "python - <<'EOF'",
        "balora = 'not a command'",
        "EOF",
        "python -m balora.cli.main report r.jsonl | tee log",
        "```",
        "```python",
        "balora.train()",
        "```",
        "~~~console",
        "$ balora export run --out x",
        "~~~",
    ])
    assert balora_commands(text) == [["bench", "nlu", "--models", "$M", "--shard", "$s/2"], ["demo", "--quick"],
                                     ["report", "r.jsonl"], ["export", "run", "--out", "x"]]
