"""Reports: tables and plots from result records, the table picked by the record's ``kind``.

- :mod:`.glue`: `balora bench nlu` records (kind ``nlu``): the GLUE table (paper's Table 2) and the OOD table;
- :mod:`.nlg`: `balora bench nlg` records (kind ``nlg``): the paper's Table 1;
- :mod:`.demo`: the demo's report.md; :mod:`.stats` (paired bootstrap, collapse flag), :mod:`.plots`.

Analyses add their own kind with :func:`register_table` (the hook): ``register_table("my-kind", render)``
where ``render(records) -> str`` returns Markdown.
"""

from __future__ import annotations

from typing import Callable, Iterable

TableFn = Callable[[list[dict]], str]


def _glue(records: list[dict]) -> str:
    from .glue import markdown_tables, summarize

    return markdown_tables(summarize(records))


def _nlg(records: list[dict]) -> str:
    from .nlg import nlg_table

    return nlg_table(records)


def _analysis(records: list[dict]) -> str:
    """`balora analyze` records: per analysis, the main table and ba-lora vs lora / pissa paired within each
    setting (the analysis's own report.md, written by the command, also compares against its reference)."""
    from .analysis_report import comparisons_table, group_records, main_table, main_metric, paired_rows

    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r.get("analysis", "analysis"), []).append(r)
    parts = []
    for kind, recs in by.items():
        groups, metric = group_records(recs), main_metric(recs)
        parts += [f"## Analysis: {kind}", "", main_table(kind, groups, metric), "",
                  comparisons_table(paired_rows(groups, "", metric, 1000)), ""]
    return "\n".join(parts)


TABLES: dict[str, TableFn] = {"nlu": _glue, "nlg": _nlg, "analysis": _analysis}


def register_table(kind: str, render: TableFn) -> None:
    """Render the records of ``kind`` with ``render(records) -> Markdown`` (an analysis's own records)."""
    TABLES[kind] = render


def record_kind(record: dict) -> str:
    """The kind of a results record. Records from before the field existed: a GLUE task is an ``nlu`` sweep
    record, anything else (``gsm8k-train``, ...) an ``nlg`` one."""
    if record.get("kind"):
        return record["kind"]
    from ..data.glue import GLUE_TASKS

    return "nlu" if record.get("task") in GLUE_TASKS else "nlg"


def markdown_report(records: Iterable[dict]) -> str:
    """The Markdown tables of ``records``: one section per kind present, each in that kind's layout."""
    by_kind: dict[str, list[dict]] = {}
    for r in records:
        by_kind.setdefault(record_kind(r), []).append(r)
    unknown = sorted(set(by_kind) - set(TABLES))
    if unknown:
        raise ValueError(f"no table for record kind(s) {unknown}; known: {sorted(TABLES)}")
    return "\n\n".join(TABLES[kind](recs) for kind, recs in by_kind.items())
