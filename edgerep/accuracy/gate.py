"""The accuracy gate: compare measured results with a committed baseline, row by row, and fail a CI build.

Results come from ``edgerep eval --json`` (or ``edgerep export --json``, whose validation on labelled photos
carries the same numbers). Each row is keyed by ``(model, target, precision)``; ``target`` is ``torch`` for
a PyTorch checkpoint.

Baseline file (JSON, written by ``edgerep check RESULTS --baseline FILE --update``, then committed)::

    {"format": "edgerep.accuracy-baseline",
     "version": 1,
     "data": "edgerep/data/cifar10/test (200 images, class folders)",   # informational: what was measured
     "rows": [
       {"model": "repghostnet_050", "target": "onnx", "precision": "int8",
        "top1_pct": 67.0,               # top-1 in percent on the data above (omit: top-1 is not gated)
        "count": 200,                   # images measured; results on another number of images are refused
        "tolerance_pct": 1.0,           # optional: allowed top-1 drop, absolute points (default by precision)
        "min_top1_agreement": 0.91,     # optional floor: share of images whose top-1 equals the fp32 reference's
        "min_cosine": 0.983}]}          # optional floor: mean per-image cosine of the logits vs the reference

A row fails when ``top1_pct - measured > tolerance_pct`` or an agreement value is below its floor (or its
export failed). Default tolerance: 0.5 points for fp32/fp16, 1.0 for every 8-bit-or-smaller precision
(int8, w8, palettize*). ``--update`` keeps a row's ``tolerance_pct`` (it is configuration) and re-measures
the rest: ``top1_pct`` and ``count`` as measured, the agreement floors just below what was measured
(top-1 agreement minus the tolerance, the cosine distance doubled), so that a later, worse export fails.

Everything that makes the comparison meaningless is bad input (exit 2), not a failure: a malformed
baseline, a row on one side only, a different number of images, top-1 or agreement gated but not measured.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInputError
from ..fileio import write_json

__all__ = ["BASELINE_FORMAT", "GateReport", "Measured", "check", "read_baseline", "read_results", "updated_baseline"]

RESULTS_KIND = "edgerep.eval"  # the "kind" of an ``edgerep eval --json`` document (edgerep.accuracy.evaluate writes it)
BASELINE_FORMAT = "edgerep.accuracy-baseline"
BASELINE_VERSION = 1
FLOAT_PRECISIONS = ("fp32", "fp16")
TOLERANCE_FLOAT_PCT = 0.5
TOLERANCE_QUANTIZED_PCT = 1.0
_ROW_KEYS = {"model", "target", "precision", "top1_pct", "count", "tolerance_pct", "min_top1_agreement", "min_cosine"}
_EPS = 1e-9  # comparisons of values that went through JSON

Key = tuple[str, str, str]


def default_tolerance_pct(precision: str) -> float:
    return TOLERANCE_FLOAT_PCT if precision in FLOAT_PRECISIONS else TOLERANCE_QUANTIZED_PCT


@dataclass
class Measured:
    """One results row, whatever command produced it. ``top1`` is a fraction (0..1) or None (unlabelled)."""

    model: str
    target: str
    precision: str
    count: int
    top1: float | None
    top1_agreement: float | None
    cosine: float | None
    error: str | None = None  # the export of this row failed
    data: str | None = None  # what it was measured on

    @property
    def key(self) -> Key:
        return (self.model, self.target, self.precision)


@dataclass
class RowVerdict:
    model: str
    target: str
    precision: str
    baseline_top1_pct: float | None
    top1_pct: float | None
    drop_pct: float | None
    tolerance_pct: float
    top1_agreement: float | None
    min_top1_agreement: float | None
    cosine: float | None
    min_cosine: float | None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class GateReport:
    baseline: str
    rows: list[RowVerdict]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        return {"ok": self.passed, "baseline": self.baseline,
                "rows": [{**asdict(r), "passed": r.passed} for r in self.rows]}


# --- reading ----------------------------------------------------------------------------------------


def read_results(paths: list[str | Path]) -> list[Measured]:
    """Rows of one or more results files (eval or export JSON); a key measured twice is refused."""
    rows: list[Measured] = []
    for path in paths:
        rows += _results_rows(Path(path), _read_json(Path(path), "results file"))
    seen: dict[Key, int] = {}
    for r in rows:
        seen[r.key] = seen.get(r.key, 0) + 1
    twice = [k for k, n in seen.items() if n > 1]
    if twice:
        raise BadInputError(f"results hold {_name(twice[0])} more than once; gate one measurement per row")
    return rows


def read_baseline(path: str | Path) -> dict[Key, dict]:
    """The baseline's rows by key, every field checked: a malformed file is a one-line error naming the row."""
    p = Path(path)
    doc = _read_json(p, "baseline")
    if not isinstance(doc, dict) or doc.get("format") != BASELINE_FORMAT:
        raise BadInputError(f"baseline {p} is not an edgerep accuracy baseline (\"format\": \"{BASELINE_FORMAT}\");"
                            " create one with: edgerep check RESULTS --baseline FILE --update")
    if doc.get("version") != BASELINE_VERSION:
        raise BadInputError(f"baseline {p} has version {doc.get('version')!r}; this edgerep reads {BASELINE_VERSION}")
    rows = doc.get("rows")
    if not isinstance(rows, list) or not rows:
        raise BadInputError(f"baseline {p} has no \"rows\" list (or it is empty); re-create it with --update")
    out: dict[Key, dict] = {}
    for i, row in enumerate(rows):
        where = f"baseline {p} row {i + 1}"
        if not isinstance(row, dict):
            raise BadInputError(f"{where} is not an object")
        unknown = sorted(set(row) - _ROW_KEYS)
        if unknown:
            raise BadInputError(f"{where} has unknown field {unknown[0]!r}; fields: {', '.join(sorted(_ROW_KEYS))}")
        for k in ("model", "target", "precision"):
            if not isinstance(row.get(k), str) or not row[k]:
                raise BadInputError(f"{where} needs {k!r} (a non-empty string)")
        _number(row, "top1_pct", where, 0, 100)
        _number(row, "tolerance_pct", where, 0, 100)
        _number(row, "min_top1_agreement", where, 0, 1)
        _number(row, "min_cosine", where, -1, 1)
        count = row.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise BadInputError(f"{where} needs \"count\" (the number of images measured, a positive integer)")
        key = (row["model"], row["target"], row["precision"])
        if key in out:
            raise BadInputError(f"{where} repeats {_name(key)}; keep one row per (model, target, precision)")
        out[key] = row
    return out


def _results_rows(path: Path, doc: object) -> list[Measured]:
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list) or not doc["results"]:
        raise BadInputError(f"results file {path} has no \"results\" list; write it with edgerep eval --json")
    try:
        if doc.get("kind") == RESULTS_KIND:
            return [_eval_row(r, doc.get("data")) for r in doc["results"]]
        return [_export_row(doc["model"], r) for r in doc["results"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(
            f"results file {path} is not edgerep eval/export JSON ({type(exc).__name__}: {exc});"
            " write it with edgerep eval --json"
        ) from None


def _eval_row(r: dict, data: str | None) -> Measured:
    agree = r.get("agreement") or {}
    return Measured(r["model"], r["target"], r["precision"], int(r["count"]), _opt(r["top1"]),
                    _opt(agree.get("top1")), _opt(agree.get("cosine")), data=data)


def _export_row(model: str, r: dict) -> Measured:
    """An ``edgerep export --json`` row: its validation on real images is the measurement."""
    sets = (r.get("validation") or {}).get("sets") or []
    photos = next((s for s in sets if s["kind"] == "images"), None)
    error = None if r["status"] == "validated" else f"export {r['status']}: {r.get('error', '')}"
    if photos is None:
        if error is None:
            raise ValueError(f"{r['target']} {r['precision']} was validated on no real images (pass --val DIR)")
        return Measured(model, r["target"], r["precision"], 0, None, None, None, error)
    return Measured(model, r["target"], r["precision"], int(photos["n"]), _opt(photos.get("accuracy_artifact")),
                    _opt(photos["top1_agreement"]), _opt(photos["cosine"]), error, photos.get("label"))


# --- the comparison ---------------------------------------------------------------------------------


def check(results: list[Measured], baseline: dict[Key, dict], where: str = "baseline") -> GateReport:
    """Judge every row; rows on one side only, or gated values that were not measured, raise BadInputError."""
    measured = {r.key: r for r in results}
    missing = [k for k in baseline if k not in measured]
    if missing:
        raise BadInputError(f"results lack {len(missing)} row(s) of {where}: {', '.join(map(_name, missing[:3]))};"
                            " evaluate those artifacts too, or remove the rows with --update")
    extra = [k for k in measured if k not in baseline]
    if extra:
        raise BadInputError(f"{where} has no row for {', '.join(map(_name, extra[:3]))}; add them on purpose with"
                            " edgerep check RESULTS --baseline FILE --update")
    return GateReport(where, [_judge(measured[k], row) for k, row in baseline.items()])


def _judge(m: Measured, row: dict) -> RowVerdict:
    tol = float(row.get("tolerance_pct", default_tolerance_pct(m.precision)))
    base = row.get("top1_pct")
    v = RowVerdict(m.model, m.target, m.precision, base, None if m.top1 is None else 100 * m.top1, None, tol,
                   m.top1_agreement, row.get("min_top1_agreement"), m.cosine, row.get("min_cosine"))
    if m.error is not None:
        v.failures.append(m.error)
        return v
    if m.count != row["count"]:
        raise BadInputError(f"{_name(m.key)} was measured on {m.count} images, the baseline on {row['count']};"
                            " evaluate on the baseline's data, or re-measure it on purpose with --update")
    if base is not None:
        if v.top1_pct is None:
            raise BadInputError(f"{_name(m.key)} has no top-1 (the images had no labels) but the baseline gates it;"
                                " evaluate on labelled images (one subfolder per class)")
        v.drop_pct = base - v.top1_pct
        if v.drop_pct > tol + _EPS:
            v.failures.append(f"top-1 dropped {v.drop_pct:.2f} points ({base:.2f} -> {v.top1_pct:.2f}) > {tol:g}")
    for value, floor, what in ((m.top1_agreement, v.min_top1_agreement, "top-1 agreement"),
                               (m.cosine, v.min_cosine, "cosine")):
        if floor is None:
            continue
        if value is None:
            raise BadInputError(f"{_name(m.key)} has no {what} with an fp32 reference but the baseline gates it;"
                                " evaluate with --reference CHECKPOINT")
        if value < floor - _EPS:
            v.failures.append(f"{what} {value:.6g} < floor {floor:g}")
    return v


# --- writing ----------------------------------------------------------------------------------------


def updated_baseline(results: list[Measured], old: dict[Key, dict] | None = None) -> dict:
    """A new baseline from ``results``: measured values, floors just below them, each old row's tolerance kept."""
    rows = []
    for m in results:
        if m.error is not None:
            raise BadInputError(f"{_name(m.key)} failed ({m.error}); fix it before writing it into a baseline")
        row: dict = {"model": m.model, "target": m.target, "precision": m.precision}
        tol = (old or {}).get(m.key, {}).get("tolerance_pct")
        if m.top1 is not None:
            row["top1_pct"] = round(100 * m.top1, 2)
        row["count"] = m.count
        if tol is not None:
            row["tolerance_pct"] = tol
        tol = default_tolerance_pct(m.precision) if tol is None else tol
        if m.top1_agreement is not None:
            row["min_top1_agreement"] = _round_down(max(0.0, m.top1_agreement - tol / 100), 3)
        if m.cosine is not None:
            row["min_cosine"] = _round_down(1 - 2 * (1 - m.cosine), 6)
        rows.append(row)
    data = "; ".join(dict.fromkeys(m.data for m in results if m.data)) or None
    return {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "data": data, "rows": rows}


def write_baseline(path: str | Path, baseline: dict) -> Path:
    """Atomically (temporary file + rename): a CI job never reads half a baseline."""
    return write_json(path, baseline)


def _round_down(x: float, digits: int) -> float:
    scale = 10**digits
    return math.floor(x * scale + _EPS) / scale


# --- small helpers ----------------------------------------------------------------------------------


def _read_json(p: Path, what: str) -> object:
    if not p.is_file():
        raise BadInputError(f"{what} {p} does not exist; check the path")
    try:
        return json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInputError(f"cannot read {what} {p} ({exc})") from None
    except json.JSONDecodeError as exc:
        why = f"line {exc.lineno}: {exc.msg}"
        raise BadInputError(f"{what} {p} is not valid JSON ({why}); fix or re-create it") from None


def _number(row: dict, key: str, where: str, lo: float, hi: float) -> None:
    if key not in row:
        return
    v = row[key]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadInputError(f"{where}: {key!r} must be a number from {lo:g} to {hi:g}, got {v!r}")


def _opt(v: object) -> float | None:
    return None if v is None else float(v)


def _name(key: Key) -> str:
    return " ".join(key)
