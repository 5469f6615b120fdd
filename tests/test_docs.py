"""The hand-written and generated docs agree with the code: docs/options.md is current, and the defaults table of
docs/method.md is what BALoRAConfig resolves for each task."""

import re
from pathlib import Path

import pytest

from balora.config import BALoRAConfig
from balora.options_doc import render

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_options_doc_is_current():
    path = DOCS / "options.md"
    assert path.read_text() == render(), "regenerate with: python -m balora.options_doc > docs/options.md"


def _method_defaults() -> dict[str, tuple[float, float, float, int]]:
    """The rows of docs/method.md's table ``| | l1 (consistency) | l2 (diversity) | l3 (SVD) | k |``."""
    lines = (DOCS / "method.md").read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if re.match(r"\|\s*\|\s*l1 \(consistency\)", line))
    rows = {}
    for line in lines[header + 2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) != 5:
            break
        rows[cells[0].lower()] = (float(cells[1]), float(cells[2]), float(cells[3]), int(cells[4]))
    return rows


@pytest.mark.parametrize("task", ["nlu", "nlg"])
def test_method_doc_defaults_are_the_configs(task):
    documented = _method_defaults()
    assert task in documented, f"docs/method.md's defaults table has no {task.upper()} row"
    cfg = BALoRAConfig(task=task)
    assert (cfg.lambda_consistency, cfg.lambda_diversity, cfg.lambda_svd, cfg.svd_top_k) == documented[task]


REPO = DOCS.parent
# The superseded runs keep the paths they had when they ran (their README says so).
ARCHIVE = DOCS / "results" / "archive"
REPO_PATH = re.compile(r"(?<![\w./-])(?:docs|configs|scripts|benchmarks)/[\w./-]+\.(?:md|ya?ml|jsonl?|py|sh|png|csv)\b")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _user_texts():
    for path in [REPO / "README.md", *sorted(DOCS.rglob("*.md")), *sorted((REPO / "configs").rglob("*.yaml")),
                 *sorted((REPO / "src").rglob("*.py"))]:
        if ARCHIVE not in path.parents:
            yield path, path.read_text(encoding="utf-8")


def test_paths_the_docs_name_exist():
    """README, docs, config comments and src/ name repository files (docs/..., configs/...) that exist, and every
    relative Markdown link resolves (a moved or renamed file leaves no dangling reference)."""
    missing = []
    for path, text in _user_texts():
        where = path.relative_to(REPO)
        missing += [f"{where}: {name}" for name in REPO_PATH.findall(text) if not (REPO / name).exists()]
        if path.suffix == ".md":
            for target in MARKDOWN_LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
                file = target.split("#")[0]
                if file and not re.match(r"^[a-z][a-z0-9+.-]*:", file) and not (path.parent / file).exists():
                    missing.append(f"{where}: link {target}")
    assert not missing, "named but not in the repository:\n" + "\n".join(missing)
