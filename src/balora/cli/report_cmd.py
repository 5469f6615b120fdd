"""`balora report RESULTS.jsonl`: paper-style tables (Markdown, CSV) and a bar plot from a bench results file."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="tables (Table 2 layout) and a bar plot from a bench results file",
                       description="Aggregate a `balora bench` results file: per model, rows = methods with "
                                   "#Params, columns = tasks (headline metric x100, mean ± std over seeds), Avg.; "
                                   "writes <stem>.md, <stem>.csv and <stem>.png and prints the Markdown.")
    p.add_argument("results", nargs="+", help="results file (JSON Lines) written by balora bench; with --verdict, "
                                              "one or more NAME=RECORDS (a task name and its records file)")
    p.add_argument("--out", help="output folder (default: the results file's folder)")
    p.add_argument("--stem", help="output file name without extension (default: the results file's stem)")
    p.add_argument("--format", nargs="+", default=["md", "csv"], choices=["md", "csv"], help="table formats")
    p.add_argument("--no-plot", action="store_true", help="skip the bar plot")
    p.add_argument("--preamble", help="Markdown file whose text goes above the tables in <stem>.md")
    p.add_argument("--paired", action="store_true",
                   help="also write <stem>_paired.md: per task and evaluation set, paired differences between "
                        "methods (bootstrap over test examples and seeds; t interval over seeds), collapse counts, "
                        "runs above the constant baseline and wall times (NLU records with per-example predictions)")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap draws of --paired / --verdict")
    p.add_argument("--verdict", action="store_true",
                   help="write <out>/verdict.md and verdict_lr.png from tuned sweeps (one records file per task): "
                        "each method at its selected setting, paired against pissa and lora (balora.reports.verdict)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..atomic import write_text_atomic
    from ..bench.runner import read_results
    from ..reports import markdown_report, record_kind
    from ..reports.glue import markdown_tables, summarize, write_report

    if args.verdict:
        return _verdict(args)
    if len(args.results) != 1:
        raise ValueError(f"give one results file (or --verdict with NAME=RECORDS pairs), got {len(args.results)}")
    path = Path(args.results[0])
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} not found")
    records = read_results(path)
    if any(record_kind(r) != "nlu" for r in records):  # NLG (Table 1) or mixed kinds: the table per record kind
        text = markdown_report(records)
        if args.preamble:
            text = Path(args.preamble).read_text().rstrip() + "\n\n" + text
        target = Path(args.out or path.parent) / f"{args.stem or path.stem}.md"
        write_text_atomic(target, text + "\n")
        print(text)
        print(f"wrote {target}")
        return 0
    summary = summarize(records, source=str(path))
    preamble = Path(args.preamble).read_text() if args.preamble else None
    written = write_report(summary, args.out or path.parent, args.stem or path.stem, args.format,
                           plot=not args.no_plot, preamble=preamble)
    print(markdown_tables(summary))
    if args.paired:
        from ..reports.bench_paired import paired_page

        target = Path(args.out or path.parent) / f"{args.stem or path.stem}_paired.md"
        write_text_atomic(target, paired_page([(path.name, records)], n_boot=args.n_boot))
        written.append(target)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _verdict(args: argparse.Namespace) -> int:
    import shlex

    from ..bench.runner import read_results
    from ..reports.verdict import verdict_page

    tasks = []
    for item in args.results:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            raise ValueError(f"--verdict: expected NAME=RECORDS (e.g. 'SST-2=<sweep folder>/records.jsonl'),"
                             f" got {item!r}")
        if not Path(file).is_file():
            raise FileNotFoundError(f"--verdict: records file {file} (task {name!r}) not found")
        tasks.append((name, read_results(Path(file))))
    if not args.out:
        raise ValueError("--verdict: give --out (the folder of verdict.md)")
    page = verdict_page(tasks, Path(args.out), n_boot=args.n_boot,
                        command=" ".join(["balora report --verdict", *map(shlex.quote, args.results), "--out",
                                          shlex.quote(str(args.out)), "--n-boot", str(args.n_boot)]))
    print(page.read_text())
    print(f"wrote {page}")
    return 0
