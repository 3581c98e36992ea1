"""The proof that a deploy model computes what its training form computes, as a report.

``verify_deploy`` runs both forms on random inputs, on real images and on any reference outputs a
checkpoint carries (e.g. the source project's own outputs), and compares parameters, MACs, graph
nodes and torch latency. A check passes when ``rel = max|deploy - ref| / max|ref| <= rtol``.

fp32 rounding alone can exceed ``rtol`` in a large, deep model (a correct fusion of a 224 px network reached
1.18e-5 > 1e-5, exact to 3e-14 in fp64). So a train-vs-deploy check over ``rtol`` is run again with both forms in
float64 (the train form, and the deploy form made again from it by ``refuse``, so that no fp32 rounding of the
fused weights remains): only when the error stays above ``FP64_RTOL`` there is it a mismatch of the math (a fusion
bug); the report carries both numbers.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .metrics import count_macs, count_nodes, count_params, measure_latency
from .numerics import output_error

DEFAULT_RTOL = 1e-5
FP64_RTOL = 1e-9  # what fp64 rounding leaves of a correct fusion, with margin (fusions measure ~1e-14)
# A deploy form may differ from its train form by this multiple of fp32's own rounding. Measured on the deep test
# net (tests/proof/test_verify.py): a correct fp32 fusion reaches 0.5x, weights rounded to bfloat16 6x (1 thread).
ROUNDING_SLACK = 3.0


@dataclass
class Check:
    """One comparison: the ``form`` ("train"/"deploy") ran on ``inputs``, compared with ``reference``."""

    form: str
    inputs: str
    reference: str
    max_abs: float
    rel: float
    rtol: float
    rel_fp64: float | None = None  # the same check in float64, run when the fp32 one exceeds ``rtol``
    fp32_rounding: float | None = None  # how far fp32 arithmetic alone takes either form from the float64 output

    @property
    def rtol_fp64(self) -> float:
        """The float64 bound: ``FP64_RTOL``, or the user's ``rtol`` when that is stricter."""
        return min(FP64_RTOL, self.rtol)

    @property
    def passed(self) -> bool:
        """Within ``rtol`` in fp32; or the excess is fp32 rounding only: the math agrees in float64 (within
        ``rtol_fp64``) and the deploy form is no further from the float64 truth than ``ROUNDING_SLACK`` times the
        train form's own fp32 rounding (so a deploy module that loses precision of its own still fails)."""
        if self.rel <= self.rtol:
            return True
        return (self.rel_fp64 is not None and self.rel_fp64 <= self.rtol_fp64 and self.fp32_rounding is not None
                and self.rel <= ROUNDING_SLACK * max(self.fp32_rounding, self.rtol / ROUNDING_SLACK))


@dataclass
class FormStats:
    params: int
    macs: int
    nodes: dict[str, int] | None
    latency_ms: float | None = None

    @property
    def node_total(self) -> int | None:
        return None if self.nodes is None else sum(self.nodes.values())


@dataclass
class DeployReport:
    model: str
    blocks_fused: dict[str, int]
    input_size: tuple[int, int, int]
    rtol: float
    train: FormStats
    deploy: FormStats
    checks: list[Check] = field(default_factory=list)
    unmerged: list[str] = field(default_factory=list)  # generic pass: "module (op, node): why", left as they are

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    @property
    def worst_rel(self) -> float:
        return max((c.rel for c in self.checks), default=float("nan"))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["worst_rel"] = self.worst_rel
        for c, cd in zip(self.checks, d["checks"]):
            cd["passed"] = c.passed
        return d


@torch.no_grad()
def verify_deploy(
    train_model: nn.Module,
    deploy_model: nn.Module,
    *,
    name: str,
    input_size: tuple[int, int, int],
    blocks_fused: dict[str, int],
    rtol: float = DEFAULT_RTOL,
    random_batches: int = 2,
    batch_size: int = 2,
    images: Tensor | None = None,
    images_label: str = "real images",
    references: Sequence[tuple[str, Tensor, Tensor]] = (),
    latency: bool = True,
    seed: int = 0,
    refuse: Callable[[nn.Module], nn.Module] | None = None,
) -> DeployReport:
    """Compare ``deploy_model`` with ``train_model`` (both eval mode) and with reference outputs.

    ``references`` holds ``(label, input, expected_output)`` triples, e.g. a checkpoint's own
    ``input`` / ``output_train`` / ``output_deploy``: both forms must reproduce each (the train form
    proves the checkpoint was read right, the deploy form that fusion kept the function). ``refuse`` makes the
    deploy form from a float64 copy of the train form, for the fp64 re-check (default: a float64 copy of
    ``deploy_model``, which keeps the fp32 rounding of its fused weights).
    """
    train_model.eval()
    deploy_model.eval()
    report = DeployReport(
        model=name,
        blocks_fused=blocks_fused,
        input_size=tuple(input_size),
        rtol=rtol,
        train=_form_stats(train_model, input_size),
        deploy=_form_stats(deploy_model, input_size),
    )
    gen = torch.Generator().manual_seed(seed)
    fp64 = _Fp64(train_model, deploy_model, refuse)
    for i in range(random_batches):
        x = torch.randn(batch_size, *input_size, generator=gen)
        report.checks.append(_compare(f"random #{i + 1}", x, train_model, deploy_model, rtol, fp64))
    if images is not None and len(images):
        report.checks.append(_compare(images_label, images, train_model, deploy_model, rtol, fp64))
    for label, x, expected in references:
        for form, model in (("train", train_model), ("deploy", deploy_model)):
            err = output_error(expected, model(x))
            report.checks.append(Check(form, f"checkpoint input {_shape(x)}", label, err.max_abs, err.rel, rtol))
    if latency:
        x = torch.randn(1, *input_size, generator=gen)
        times = measure_latency({"train": train_model, "deploy": deploy_model}, x)
        report.train.latency_ms, report.deploy.latency_ms = times["train"], times["deploy"]
    return report


def failure_message(report: DeployReport) -> str:
    """One line on the worst failed check: its error, and whether float64 shows a math bug or a rounding loss."""
    worst = max([c for c in report.checks if not c.passed] or report.checks, key=lambda c: c.rel)
    why = ""
    if worst.rel_fp64 is not None and worst.rel_fp64 > worst.rtol_fp64:
        why = f", and {worst.rel_fp64:.3g} > {worst.rtol_fp64:g} in float64"
    elif worst.fp32_rounding is not None:  # exact in float64, but rounds worse than fp32 arithmetic explains
        why = f" (float64 agrees; fp32 rounding alone explains {worst.fp32_rounding:.3g})"
    return (f"{report.model}: deploy form differs from its training form: rel error {worst.rel:.3g} > {worst.rtol:g}"
            f"{why} ({worst.form} on {worst.inputs} vs {worst.reference})")


class _Fp64:
    """float64 forms, made on the first check that needs them (most runs never do)."""

    def __init__(self, train_model: nn.Module, deploy_model: nn.Module, refuse) -> None:
        self._models = (train_model, deploy_model)
        self._refuse = refuse
        self._copies: tuple[nn.Module, nn.Module] | None = None

    def rel(self, x: Tensor) -> tuple[float, float]:
        """(deploy vs train in float64, what fp32 rounding alone costs either form) on ``x``.

        fp32's own cost is the larger of the fp32 train form's error and the error of the float64-fused deploy form
        run in fp32 (exact weights, fp32 arithmetic): fused biases that cancel large running means round differently
        from the train form's steps, and which of the two rounds worse changes with the kernels the CPU picks.
        """
        if self._copies is None:
            train64 = copy.deepcopy(self._models[0]).double().eval()
            deploy64 = (self._refuse(train64) if self._refuse else copy.deepcopy(self._models[1]).double()).eval()
            self._copies = (train64, deploy64, copy.deepcopy(deploy64).float())
        train64, deploy64, deploy32 = self._copies
        x64 = x.double()
        truth = train64(x64)
        rounding = max(output_error(truth, self._models[0](x)).rel, output_error(truth, deploy32(x)).rel)
        return output_error(truth, deploy64(x64)).rel, rounding


def _compare(
    label: str, x: Tensor, train_model: nn.Module, deploy_model: nn.Module, rtol: float, fp64: _Fp64
) -> Check:
    err = output_error(train_model(x), deploy_model(x))
    check = Check("deploy", f"{label} {_shape(x)}", "train form", err.max_abs, err.rel, rtol)
    if not check.rel <= rtol:  # fp32 rounding, or a real mismatch? float64 tells them apart
        check.rel_fp64, check.fp32_rounding = fp64.rel(x)
    return check


def _form_stats(model: nn.Module, input_size: tuple[int, int, int]) -> FormStats:
    nodes = count_nodes(model)
    return FormStats(count_params(model), count_macs(model, input_size), dict(nodes) if nodes is not None else None)


def _shape(x: Tensor) -> str:
    return "x".join(str(s) for s in x.shape)
