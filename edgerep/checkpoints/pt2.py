"""Reading a ``torch.export.save``'d program (``.pt2``) without running code that came with the file.

``torch.export.load`` (torch 2.13) is not safe on untrusted files; read in ``torch/export/pt2_archive/_package.py``
and ``torch/_export/serde/serialize.py``, it can execute file content five ways:

1. weights or constants marked ``use_pickle`` go through ``torch.load(..., weights_only=False)``;
2. constants under ``opaque_obj`` go through ``pickle.loads``, ``custom_obj`` through the TorchScript unpickler;
3. the sample inputs go through ``torch.load(weights_only=True)`` and, if that fails, ``weights_only=False``;
4. ``guards_code`` strings become Python source that ``ExportedProgram.module()`` compiles and runs;
5. symbolic sizes (``expr_str``) go through ``sympy.sympify``, i.e. ``eval``; and op targets are resolved by
   ``getattr`` from the ``torch`` module (``torch.os.system`` resolves), to be called when the graph runs.

So before ``torch.export.load`` sees the file, ``read_program`` checks the archive itself: every payload config
says ``use_pickle: false`` and names tensor files only, there is no legacy (pickle) layout, no guards code,
every symbolic expression is arithmetic on size symbols, and every op is an ATen op or integer arithmetic;
and the load runs with ``TORCH_FORCE_WEIGHTS_ONLY_LOAD=1``, so the sample inputs can only be tensors. After
loading, the graph's targets are checked again as resolved objects. Anything else: ``BadInputError``.
"""

from __future__ import annotations

import json
import operator
import os
import re
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from ..errors import BadInputError

__all__ = ["program_example", "read_program"]

_ARITH = {"getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "eq", "ne", "ge", "gt", "le", "lt"}
_OPERATOR_TARGETS = {f"_operator.{n}" for n in _ARITH}
_SAFE_OPERATORS = {getattr(operator, n) for n in _ARITH}
# what a size expression may name: sympy's classes as ``srepr`` writes them, torch's integer functions, their flags
_SYMPY_NAMES = {"Symbol", "Integer", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Eq", "Ne", "True", "False",
                "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
                "CeilDiv", "TruncToInt", "IntTrueDiv", "FloatTrueDiv", "ToFloat", "PowByNatural",
                "positive", "negative", "nonnegative", "integer", "real", "finite", "commutative"}
_EXPR_TOKEN = re.compile(r"\s*(?:'[su]\d+'|\d+|[A-Za-z_]\w*|\*\*|//|[-+*/%(),<>=!])")
_TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+")


def read_program(path: str | Path) -> torch.export.ExportedProgram:
    """The exported program in ``path``, after the checks above; ``BadInputError`` names what was refused."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such file; give a .pt2 file written by torch.export.save")
    _vet_archive(path)
    with _weights_only_loads():
        try:
            ep = torch.export.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure to deserialize is bad input, in one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"{path}: torch.export.load cannot read it ({first[:200]}); "
                                "write it with torch.export.save from torch 2.13") from None
    _vet_graph(ep, path)
    return ep


def program_example(ep: torch.export.ExportedProgram, where: str | Path) -> torch.Tensor:
    """One input the program takes: its saved sample input (batch 1), else zeros of its traced shape."""
    user = [s for s in ep.graph_signature.input_specs if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
    if len(user) != 1:
        raise BadInputError(f"{where}: the program takes {len(user)} inputs; edgerep needs one image tensor")
    sample = ep.example_inputs[0][0] if ep.example_inputs and ep.example_inputs[0] else None
    if isinstance(sample, torch.Tensor) and sample.dim() == 4:
        return sample[:1].detach().float().clone()
    node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == user[0].arg.name)
    val = node.meta.get("val")
    if val is None or val.dim() != 4:
        raise BadInputError(f"{where}: the program's input is not an NCHW image tensor")
    shape = [int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in val.shape]
    return torch.zeros(1, *shape[1:])


@contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside is weights-only, whatever its caller asks (torch's own override switch)."""
    key = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _vet_archive(path: Path) -> None:
    if not zipfile.is_zipfile(path):
        raise BadInputError(f"{path}: not a .pt2 archive (not a zip file); write it with torch.export.save")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        models = [n for n in names if re.fullmatch(r"[^/]+/models/[^/]+\.json", n)]
        if not models:
            raise BadInputError(f"{path}: no exported program inside (an old or foreign archive layout, which "
                                "torch would read with pickle); re-save it with torch.export.save from torch 2.13")
        root = models[0].split("/")[0]
        for n in names:
            if re.fullmatch(r"[^/]+/data/(weights|constants)/[^/]+\.pt", n) or n.endswith(("serialized_state_dict.pt",
                                                                                           "serialized_constants.pt")):
                raise BadInputError(f"{path}: {n} is a pickled (legacy) payload; refused, as unpickling it can run "
                                    "code: re-save the program with torch.export.save from torch 2.13")
        for n in names:
            if n.endswith("_config.json") and "/data/" in n:
                _vet_config(path, n, json.loads(z.read(n)))
        for n in models:
            _vet_model(path, n, json.loads(z.read(n)))
        if not any(n.startswith(f"{root}/data/weights/") for n in names):
            raise BadInputError(f"{path}: no weights in the archive")


def _vet_config(path: Path, name: str, config: dict) -> None:
    for fqn, entry in (config.get("config") or {}).items():
        if entry.get("use_pickle"):
            raise BadInputError(f"{path}: {fqn} is stored pickled ({name}); refused, as unpickling it can run "
                                "code (plain tensors only)")
        file = str(entry.get("path_name", ""))
        if "/constants/" in name and not file.startswith("tensor"):
            raise BadInputError(f"{path}: constant {fqn} is a Python/TorchScript object ({file}); refused, as "
                                "loading it runs code (plain tensors only)")


def _vet_model(path: Path, name: str, model: dict) -> None:
    if model.get("guards_code"):
        raise BadInputError(f"{path}: the program carries guard code ({model['guards_code'][0][:60]!r}...), which "
                            "loading would compile and run; refused")
    for key, value in _items(model):
        if key == "target" and isinstance(value, str):
            _vet_target(path, value)
        elif key == "expr_str" and isinstance(value, str):
            _vet_expr(path, value)
    for sym in model.get("range_constraints", {}):
        _vet_expr(path, sym)


def _vet_target(path: Path, target: str) -> None:
    if _TARGET.fullmatch(target) or target in _OPERATOR_TARGETS:
        return
    if target.startswith("torch.ops.higher_order."):
        raise BadInputError(f"{path}: the program has data-dependent control flow or a higher-order op ({target}); "
                            "export a model whose graph is fixed (no torch.cond / while_loop) to re-parameterize it")
    raise BadInputError(f"{path}: op {target!r} is not an ATen op; refused (only ATen graphs are read)")


def _vet_expr(path: Path, expr: str) -> None:
    pos = 0
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None or m.end() == pos:
            raise BadInputError(f"{path}: symbolic size {expr[:60]!r} is not size arithmetic; refused")
        token = m.group().strip()
        if re.fullmatch(r"[A-Za-z_]\w*", token) and not (re.fullmatch(r"[su]\d+", token) or token in _SYMPY_NAMES):
            raise BadInputError(f"{path}: symbolic size {expr[:60]!r} names {token!r}; refused (size symbols only)")
        pos = m.end()


def _items(obj: object) -> Iterator[tuple[str, object]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _items(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _items(v)


def _vet_graph(ep: torch.export.ExportedProgram, path: Path) -> None:
    """The resolved targets: ATen op overloads and integer arithmetic only (what the archive check allowed)."""
    for node in ep.graph.nodes:
        if node.op != "call_function":
            continue
        t = node.target
        ok = (isinstance(t, torch._ops.OpOverload) and t.namespace == "aten") or t in _SAFE_OPERATORS
        if not ok:
            _vet_target(path, getattr(t, "__module__", "") + "." + getattr(t, "__name__", str(t)))
