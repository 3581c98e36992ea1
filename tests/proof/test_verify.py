"""The proof machinery itself: it must catch a wrong deploy form, and count what it claims to count."""

import pytest
import torch
from torch import nn

from edgerep.api import deploy
from edgerep.errors import VerificationError
from edgerep.proof.metrics import count_macs, count_nodes, count_params
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.proof.report import format_deploy_report
from edgerep.proof.verify import ROUNDING_SLACK, failure_message, verify_deploy
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.repvgg import RepVGGBlock
from edgerep.reparam.fuse import KernelBias


def _net() -> nn.Sequential:
    net = nn.Sequential(
        RepVGGBlock(3, 8, stride=2), RepVGGBlock(8, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
    )
    return randomize_bn(net, torch.Generator().manual_seed(1)).eval()


def test_deploy_passes_and_reports_every_number():
    net = _net()
    deployed, report = deploy(net, name="toy", input_size=(3, 16, 16), images=torch.randn(3, 3, 16, 16))
    assert report.passed and report.worst_rel <= 1e-5
    assert report.blocks_fused == {"RepVGGBlock": 2}
    assert [c.inputs.split()[0] for c in report.checks] == ["random", "random", "real"]
    assert report.train.params > report.deploy.params == count_params(deployed)
    assert report.deploy.nodes == {"Conv2d": 2, "ReLU": 2, "AdaptiveAvgPool2d": 1, "Flatten": 1, "Linear": 1}
    assert report.train.latency_ms > 0 and report.deploy.latency_ms > 0
    d = report.to_dict()
    assert d["passed"] is True and len(d["checks"]) == 3


def test_deploy_fails_loudly_on_a_wrong_fusion(monkeypatch):
    net = _net()
    real = RepVGGBlock.get_kernel_bias

    def off_by_a_bit(self):
        k, b = real(self)
        return KernelBias(k, b + 1e-3)

    monkeypatch.setattr(RepVGGBlock, "get_kernel_bias", off_by_a_bit)
    with pytest.raises(VerificationError, match="rel error") as exc:
        deploy(net, name="toy", input_size=(3, 16, 16), latency=False)
    assert exc.value.report is not None and not exc.value.report.passed


def test_reference_outputs_are_checked_for_both_forms():
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        good = net(x)
    bad = good.clone()
    bad[0, 0] += 1.0
    report = verify_deploy(
        net, net, name="toy", input_size=(3, 16, 16), blocks_fused={}, latency=False,
        references=[("good", x, good), ("bad", x, bad)],
    )
    by_ref = {(c.form, c.reference): c.passed for c in report.checks if c.reference in ("good", "bad")}
    assert by_ref == {
        ("train", "good"): True, ("deploy", "good"): True, ("train", "bad"): False, ("deploy", "bad"): False
    }


def test_macs_of_known_layers():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
    # output 6 x 4 x 4 positions, each (4/2) x 3 x 3 MACs
    assert count_macs(conv, (4, 8, 8)) == 6 * 4 * 4 * 2 * 9
    assert count_macs(nn.Sequential(nn.Flatten(), nn.Linear(12, 7)), (3, 2, 2)) == 12 * 7


def test_untraceable_model_has_no_node_count():
    class DataDependent(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x

    assert count_nodes(DataDependent()) is None


def test_relative_error_definition():
    err = output_error(torch.tensor([2.0, -4.0]), torch.tensor([2.5, -4.0]))
    assert err.max_abs == pytest.approx(0.5) and err.rel == pytest.approx(0.125)


def _deep_offset_net() -> nn.Sequential:
    """16 RepVGG blocks whose BNs carry running means ~3e3 that their betas cancel: intermediate values are large,
    so the train form's fp32 rounding alone exceeds 1e-5 (relative) while the fused math is exact in fp64."""
    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(*[RepVGGBlock(3 if i == 0 else 16, 16) for i in range(16)],
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))
    randomize_bn(net, gen)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(torch.randn(m.num_features, generator=gen) * 3e3)
                shift = m.weight * m.running_mean / (m.running_var + m.eps).sqrt()
                m.bias.copy_(shift + torch.randn(m.num_features, generator=gen) * 0.5)
    return net.eval()


def test_fp32_rounding_of_a_deep_model_is_not_called_a_mismatch():
    _, report = deploy(_deep_offset_net(), name="deep", input_size=(3, 16, 16), latency=False)
    over = [c for c in report.checks if c.rel > 1e-5]
    assert over, "the model must make fp32 rounding exceed 1e-5, or this test proves nothing"
    assert all(c.rel_fp64 is not None and c.rel_fp64 < 1e-11 for c in over)  # fp32: ~1e-4
    assert report.passed
    text = format_deploy_report(report)
    assert "ok (fp32 rounding)" in text and "float64" in text
    assert all(c["passed"] for c in report.to_dict()["checks"])
    assert sum(c["rel_fp64"] is not None for c in report.to_dict()["checks"]) == len(over)


def test_a_fusion_bug_in_a_deep_model_still_fails_in_fp64(monkeypatch):
    real = RepVGGBlock.get_kernel_bias

    def off_by_a_bit(self):
        k, b = real(self)
        return KernelBias(k, b + 1e-3)

    monkeypatch.setattr(RepVGGBlock, "get_kernel_bias", off_by_a_bit)
    with pytest.raises(VerificationError, match=r"in float64") as exc:
        deploy(_deep_offset_net(), name="deep", input_size=(3, 16, 16), latency=False)
    failed = [c for c in exc.value.report.checks if not c.passed]
    assert failed and all(c.rel_fp64 > 1e-9 for c in failed)


def test_a_deploy_form_that_loses_precision_of_its_own_still_fails():
    """fp64 agrees (the math is right) but the fp32 deploy module rounds its weights to bfloat16: not fp32 rounding."""
    net = _deep_offset_net()
    deployed = reparameterize(net)
    with torch.no_grad():
        for p in deployed.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    report = verify_deploy(net, deployed, name="deep", input_size=(3, 16, 16), blocks_fused={}, latency=False,
                           refuse=reparameterize)
    lossy = [c for c in report.checks if c.form == "deploy" and c.reference == "train form"]
    assert all(c.rel_fp64 is not None and c.rel_fp64 < 1e-12 for c in lossy), "the math itself is exact"
    assert all(c.rel > ROUNDING_SLACK * c.fp32_rounding for c in lossy) and not report.passed
    assert "float64 agrees; fp32 rounding alone explains" in failure_message(report)
