"""docs/options.md is generated from the dataclass help texts and must be current."""

from pathlib import Path

from balora.options_doc import render


def test_options_doc_is_current():
    path = Path(__file__).resolve().parents[1] / "docs" / "options.md"
    assert path.read_text() == render(), "regenerate with: python -m balora.options_doc > docs/options.md"
