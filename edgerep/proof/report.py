"""The deploy report as a person reads it: what was fused, each check against its reference, size and speed."""

from __future__ import annotations

from ..tables import human, table
from .verify import FP64_RTOL, Check, DeployReport


def format_deploy_report(report: DeployReport) -> str:
    fused = ", ".join(f"{k} x{v}" for k, v in sorted(report.blocks_fused.items())) or "none (already plain)"
    out = [f"fused blocks: {fused}", ""]
    out.append(
        table(
            ["form", "inputs", "compared with", "max abs err", "rel err", "rel err fp64", "status"],
            [
                (c.form, c.inputs, c.reference, f"{c.max_abs:.3g}", f"{c.rel:.3g}", _fp64(c), _status(c))
                for c in report.checks
            ],
            right={3, 4, 5},
        )
    )
    t, d = report.train, report.deploy
    rows = [
        ("parameters", human(t.params), human(d.params), _ratio(d.params, t.params)),
        ("MACs / image", human(t.macs), human(d.macs), _ratio(d.macs, t.macs)),
        ("graph nodes", _or_na(t.node_total), _or_na(d.node_total), _nodes_note(d.nodes)),
    ]
    if t.latency_ms is not None and d.latency_ms is not None:
        ratio = t.latency_ms / d.latency_ms if d.latency_ms > 0 else None
        speed = "" if ratio is None else f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
        rows.append(("torch latency (batch 1, median)", f"{t.latency_ms:.2f} ms", f"{d.latency_ms:.2f} ms", speed))
    size = "x".join(str(s) for s in report.input_size)
    out += ["", table([f"input {size}", "train form", "deploy form", ""], rows, right={1, 2})]
    verdict = "PASS" if report.passed else "FAIL"
    out += ["", f"{verdict}: worst relative error {report.worst_rel:.3g} (tolerance {report.rtol:g})"]
    if any(c.rel_fp64 is not None for c in report.checks):
        out.append(
            f"checks over {report.rtol:g} in fp32 were run again in float64 (tolerance {FP64_RTOL:g}): within it, the"
            " fp32 error is rounding of this model, not a fusion mismatch"
        )
    return "\n".join(out)


def _fp64(c: Check) -> str:
    return "" if c.rel_fp64 is None else f"{c.rel_fp64:.3g}"


def _status(c: Check) -> str:
    if not c.passed:
        return "FAIL"
    return "ok" if c.rel <= c.rtol else "ok (fp32 rounding)"


def _or_na(n: int | None) -> int | str:
    return "n/a" if n is None else n


def _ratio(new: int, old: int) -> str:
    return f"{(new - old) / old:+.1%}" if old else ""


def _nodes_note(nodes: dict[str, int] | None) -> str:
    if not nodes:
        return ""
    main = sorted(nodes.items(), key=lambda kv: -kv[1])[:4]
    return ", ".join(f"{k} {v}" for k, v in main)
