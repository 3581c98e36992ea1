"""The proof that a deploy model computes what its training form computes, as a report.

``verify_deploy`` runs both forms on random inputs, on real images and on any reference outputs a
checkpoint carries (e.g. the source project's own outputs), and compares parameters, MACs, graph
nodes and torch latency. A check passes when ``rel = max|deploy - ref| / max|ref| <= rtol``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from .metrics import count_macs, count_nodes, count_params, measure_latency
from .numerics import output_error

DEFAULT_RTOL = 1e-5


@dataclass
class Check:
    """One comparison: the ``form`` ("train"/"deploy") ran on ``inputs``, compared with ``reference``."""

    form: str
    inputs: str
    reference: str
    max_abs: float
    rel: float
    rtol: float

    @property
    def passed(self) -> bool:
        return self.rel <= self.rtol


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
) -> DeployReport:
    """Compare ``deploy_model`` with ``train_model`` (both eval mode) and with reference outputs.

    ``references`` holds ``(label, input, expected_output)`` triples, e.g. a checkpoint's own
    ``input`` / ``output_train`` / ``output_deploy``: both forms must reproduce each (the train form
    proves the checkpoint was read right, the deploy form that fusion kept the function).
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
    for i in range(random_batches):
        x = torch.randn(batch_size, *input_size, generator=gen)
        report.checks.append(_compare(f"random #{i + 1}", x, train_model, deploy_model, rtol))
    if images is not None and len(images):
        report.checks.append(_compare(images_label, images, train_model, deploy_model, rtol))
    for label, x, expected in references:
        for form, model in (("train", train_model), ("deploy", deploy_model)):
            err = output_error(expected, model(x))
            report.checks.append(Check(form, f"checkpoint input {_shape(x)}", label, err.max_abs, err.rel, rtol))
    if latency:
        x = torch.randn(1, *input_size, generator=gen)
        times = measure_latency({"train": train_model, "deploy": deploy_model}, x)
        report.train.latency_ms, report.deploy.latency_ms = times["train"], times["deploy"]
    return report


def _compare(label: str, x: Tensor, train_model: nn.Module, deploy_model: nn.Module, rtol: float) -> Check:
    err = output_error(train_model(x), deploy_model(x))
    return Check("deploy", f"{label} {_shape(x)}", "train form", err.max_abs, err.rel, rtol)


def _form_stats(model: nn.Module, input_size: tuple[int, int, int]) -> FormStats:
    nodes = count_nodes(model)
    return FormStats(count_params(model), count_macs(model, input_size), dict(nodes) if nodes is not None else None)


def _shape(x: Tensor) -> str:
    return "x".join(str(s) for s in x.shape)
