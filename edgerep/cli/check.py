"""`edgerep check`: the CI accuracy gate, measured results against a committed baseline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ORDER = 35

EPILOG = """\
examples:
  edgerep export && edgerep eval edgerep-out/ -o results.json
  edgerep check results.json --baseline accuracy.json            # exit 1 and a table when a row regressed
  edgerep check results.json --baseline accuracy.json --update   # accept the new numbers on purpose
  edgerep check export.json --baseline accuracy.json --json      # edgerep export --json output works too

Rows are keyed by (model, target, precision). A row fails when its top-1 drops more than its tolerance
(absolute points; default 0.5 for fp32/fp16, 1.0 for int8, w8, palettize*; set "tolerance_pct" per row in
the baseline) or its agreement with the fp32 model falls below the row's floors. The baseline format is
documented in edgerep/accuracy/gate.py; --update keeps each row's tolerance and re-measures the rest.
Exit codes: 0 pass (or baseline written), 1 a row failed, 2 bad input (malformed baseline, a row missing on
either side, results measured on other data).
"""


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "check",
        help="CI gate: fail when accuracy or agreement regressed against a baseline file",
        description="Compare results of edgerep eval (or export) --json with a baseline file, row by row, and "
        "fail (exit 1, with a table) when top-1 dropped past the tolerance or agreement fell below its floor.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("results", nargs="+", metavar="RESULTS.json", help="edgerep eval -o / --json output (several ok)")
    e.add_argument("--baseline", required=True, metavar="FILE", help="the committed baseline JSON")
    e.add_argument("--update", action="store_true", help="write the baseline from these results (on purpose)")
    e.add_argument("--json", action="store_true", help="print the verdict as JSON on stdout")
    e.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..accuracy.gate import check, read_baseline, read_results, updated_baseline, write_baseline

    results = read_results(args.results)
    baseline = Path(args.baseline)
    if args.update:
        old = read_baseline(baseline) if baseline.exists() else None
        new = updated_baseline(results, old)
        write_baseline(baseline, new)
        dropped = [" ".join(k) for k in (old or {}) if k not in {m.key for m in results}]
        if args.json:
            print(json.dumps({"ok": True, "updated": str(baseline), "dropped": dropped, "baseline": new}, indent=2))
        else:
            print(format_baseline(new["rows"]))
            print(f"baseline written to {baseline} ({len(new['rows'])} rows" +
                  (f"; dropped: {', '.join(dropped)}" if dropped else "") + ")")
        return 0
    report = check(results, read_baseline(baseline), str(baseline))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(format_report(report))
    for r in report.rows:
        for why in r.failures:
            print(f"FAIL {r.model} {r.target} {r.precision}: {why}", file=sys.stderr)
    return 0 if report.passed else 1


def format_report(report) -> str:
    from ..tables import table

    rows = [(
        r.model, r.target, r.precision,
        "" if r.baseline_top1_pct is None else f"{r.baseline_top1_pct:.2f}",
        "" if r.top1_pct is None else f"{r.top1_pct:.2f}",
        "" if r.drop_pct is None else f"{r.drop_pct:+.2f}", f"{r.tolerance_pct:g}",
        _vs(r.top1_agreement, r.min_top1_agreement, 3), _vs(r.cosine, r.min_cosine, 6),
        "ok" if r.passed else "FAIL",
    ) for r in report.rows]
    head = ["model", "target", "precision", "base top-1", "top-1", "drop", "tol", "agree (floor)", "cosine (floor)",
            "status"]
    failed = sum(not r.passed for r in report.rows)
    verdict = f"PASS: {len(rows)} rows within {report.baseline}" if not failed else \
        f"FAIL: {failed} of {len(rows)} rows regressed against {report.baseline}"
    return table(head, rows, right={3, 4, 5, 6, 7, 8}) + "\n\n" + verdict


def format_baseline(rows: list[dict]) -> str:
    from ..tables import table

    return table(
        ["model", "target", "precision", "top-1 %", "images", "tol", "min agree", "min cosine"],
        [(r["model"], r["target"], r["precision"], r.get("top1_pct", ""), r["count"], r.get("tolerance_pct", "default"),
          r.get("min_top1_agreement", ""), r.get("min_cosine", "")) for r in rows],
        right={3, 4, 5, 6, 7},
    )


def _vs(value: float | None, floor: float | None, digits: int) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}" + ("" if floor is None else f" ({floor:g})")
