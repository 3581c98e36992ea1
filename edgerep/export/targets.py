"""Export targets as data: ``targets/<name>.toml`` declares what a target allows; this module reads and enforces it.

A target file holds (see targets/onnx.toml for a full example):

    name, description, backend (module under edgerep.backends), extra (pip extra), suffix,
    packages (versions recorded in manifests), layouts, default_layout, default_precision
    [options.<key>]      default, and choices = [...] and/or min / max (numbers: an integer range when min is
                         an integer); help. Both: a number in range or a named choice (e.g. "auto").
    [precisions.<name>]  description, tolerance = {max_abs, rel, cosine, top1_agreement} (any subset),
                         calibration (true: needs calibration images), scheme / schemes,
                         min_ / warn_ / max_calibration_images

Everything a user may ask for is checked here, up front, before any slow work: an unknown target,
option, option value, precision, scheme or layout is a one-line ``BadInputError`` listing what is allowed.
The files ship in the wheel as package data ``edgerep.export.targets``; a checkout reads ``<repo>/targets``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from ..errors import BadInputError
from ..resources import data_folder

TOLERANCE_KEYS = ("max_abs", "rel", "cosine", "top1_agreement")
"""Error bounds (``max_abs``, ``rel``: measured <= bound) and agreement floors (``cosine``, ``top1_agreement``: >=)."""
ERROR_BOUNDS = ("max_abs", "rel")
AGREEMENT_FLOORS = ("cosine", "top1_agreement")


@dataclass(frozen=True)
class Option:
    """One target option: its default and the values it may take (a list, a numeric range, or both)."""

    name: str
    default: object
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    help: str = ""

    def shown_default(self) -> str:
        return _show(self.default)

    def allowed(self) -> str:
        parts = [_show(c) for c in self.choices or ()]
        if self.min is not None:
            parts.append(f"{_show(self.min)}..{_show(self.max)}")
        return ", ".join(parts)

    def check(self, value: object, target: str) -> object:
        """``value`` if allowed (numbers may come as strings from a CLI), else a BadInputError naming the range."""
        for c in self.choices or ():
            if value == c or (isinstance(value, str) and _show(c) == value.lower()):
                return c
        if self.min is not None:
            try:
                number = type(self.min)(value)
            except (TypeError, ValueError):
                number = None
            if number is not None and not isinstance(value, bool) and self.min <= number <= self.max:
                return number
        raise BadInputError(
            f"target {target}: option {self.name}={_show(value)} is not allowed; allowed: {self.allowed()}"
        )


@dataclass(frozen=True)
class Precision:
    """What one precision of a target needs (calibration) and how its artifact is judged (tolerance)."""

    name: str
    description: str
    tolerance: dict[str, float]
    calibration: bool = False
    scheme: str | None = None
    schemes: tuple[str, ...] = ()
    min_calibration_images: int = 0
    warn_calibration_images: int = 0
    max_calibration_images: int = 0


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    extra: str
    suffix: str
    packages: tuple[str, ...]
    layouts: tuple[str, ...]
    default_layout: str
    default_precision: str
    options: dict[str, Option]
    precisions: dict[str, Precision]
    source: Path | None = field(default=None, compare=False)

    def precision(self, name: str | None) -> Precision:
        name = name or self.default_precision
        if name not in self.precisions:
            raise BadInputError(
                f"target {self.name} has no precision {name!r}; use one of: {', '.join(self.precisions)}"
            )
        return self.precisions[name]

    def resolve_options(self, given: dict | None) -> dict:
        """The full option set: defaults overlaid with ``given``, every key and value checked."""
        given = dict(given or {})
        unknown = sorted(k for k in given if k not in self.options)
        if unknown:
            allowed = ", ".join(self.options) or "none"
            raise BadInputError(f"target {self.name} has no option {unknown[0]!r}; its options are: {allowed}")
        return {k: opt.check(given[k], self.name) if k in given else opt.default for k, opt in self.options.items()}

    def resolve_layout(self, layout: str | None) -> str:
        layout = (layout or self.default_layout).lower()
        if layout not in self.layouts:
            raise BadInputError(f"target {self.name} has no layout {layout!r}; use one of: {', '.join(self.layouts)}")
        return layout

    def resolve_scheme(self, precision: Precision, scheme: str | None) -> str | None:
        if scheme is None:
            return precision.scheme
        if scheme not in precision.schemes:
            allowed = ", ".join(precision.schemes) or "none (this precision has no quantization scheme)"
            raise BadInputError(
                f"target {self.name} precision {precision.name} has no scheme {scheme!r}; use one of: {allowed}"
            )
        return scheme

    def tolerance(self, precision: Precision, override: dict | None = None) -> dict[str, float]:
        """The precision's tolerance with ``override`` on top (e.g. a user's --min-agreement)."""
        tol = dict(precision.tolerance)
        for key, value in (override or {}).items():
            if key not in TOLERANCE_KEYS:
                raise BadInputError(f"unknown tolerance {key!r}; use one of: {', '.join(TOLERANCE_KEYS)}")
            tol[key] = float(value)
        return tol


def target_names() -> list[str]:
    """Every target edgerep ships, sorted."""
    return sorted(p.stem for p in data_folder("targets").glob("*.toml"))


def get_target(name: str) -> Target:
    """The target ``name``; an unknown name lists the shipped ones."""
    names = target_names()
    if name not in names:
        raise BadInputError(f"unknown target {name!r}; use one of: {', '.join(names) or 'none (targets/ is missing)'}")
    return _load(name)


@cache
def _load(name: str) -> Target:
    path = data_folder("targets") / f"{name}.toml"
    try:
        data = tomllib.loads(path.read_text())
        return _parse(data, path)
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        # A broken shipped file is edgerep's bug, not the user's: say which file and what is wrong.
        raise BadInputError(f"target file {path} is invalid ({type(exc).__name__}: {exc}); reinstall edgerep") from None


def _parse(d: dict, path: Path) -> Target:
    options = {k: _option(k, v) for k, v in d.get("options", {}).items()}
    precisions = {k: _precision(k, v) for k, v in d["precisions"].items()}
    layouts = tuple(d.get("layouts", ["nchw"]))
    target = Target(
        name=d["name"],
        description=d.get("description", ""),
        backend=d.get("backend", d["name"]),
        extra=d.get("extra", d["name"]),
        suffix=d["suffix"],
        packages=tuple(d.get("packages", ())),
        layouts=layouts,
        default_layout=d.get("default_layout", layouts[0]),
        default_precision=d.get("default_precision", next(iter(precisions))),
        options=options,
        precisions=precisions,
        source=path,
    )
    if target.name != path.stem:
        raise ValueError(f"name {target.name!r} differs from the file name")
    if target.default_precision not in precisions or target.default_layout not in layouts:
        raise ValueError("default_precision / default_layout is not among the declared ones")
    for opt in options.values():
        opt.check(opt.default, target.name)  # a default outside its own range is a broken file
    return target


def _option(name: str, d: dict) -> Option:
    if ("min" in d) != ("max" in d) or ("choices" not in d and "min" not in d):
        raise ValueError(f"option {name} needs choices = [...] and/or min and max")
    choices = tuple(d["choices"]) if "choices" in d else None
    return Option(name, d["default"], choices=choices, min=d.get("min"), max=d.get("max"), help=d.get("help", ""))


def _precision(name: str, d: dict) -> Precision:
    tol = {k: float(v) for k, v in d.get("tolerance", {}).items()}
    bad = sorted(set(tol) - set(TOLERANCE_KEYS))
    if bad:
        raise ValueError(f"precision {name}: unknown tolerance {bad[0]!r}")
    schemes = tuple(d.get("schemes", [d["scheme"]] if "scheme" in d else []))
    return Precision(
        name=name,
        description=d.get("description", ""),
        tolerance=tol,
        calibration=bool(d.get("calibration", False)),
        scheme=d.get("scheme"),
        schemes=schemes,
        min_calibration_images=int(d.get("min_calibration_images", 0)),
        warn_calibration_images=int(d.get("warn_calibration_images", 0)),
        max_calibration_images=int(d.get("max_calibration_images", 0)),
    )


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def artifact_suffixes() -> dict[str, str]:
    """``{".onnx": "onnx", ...}`` from the shipped target files: a new target is evaluable without edits here."""
    return {get_target(n).suffix: n for n in target_names()}


# --- what to evaluate -------------------------------------------------------------------------------
