"""ResNet-18/34/50 (He et al., 2016) and their ACB / DBB / CMB / RefConv training forms.

Parameter names equal timm's and torchvision's ``ResNet`` (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer2.0.downsample.0`` / ``.1``, ``fc``), so their checkpoints load with no renaming. ResNet-50 is
v1.5 (stride on the 3x3), like both. The re-param variants are the plain net passed through
``convert_convs``: every 3x3 and the 7x7 stem become blocks and ``reparameterize`` gives back the plain
net. For RefConv's recipe, load pretrained ``resnet18`` weights first and convert that model;
``resnet18_refconv`` (random basis) exists to load RefConv-trained checkpoints.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..reparam.convert_convs import convert_convs
from .registry import register_model


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a residual; the first conv carries the stride."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.act2(x + shortcut)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (with the stride), 1x1 expand by 4, each with BN, and a residual."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.bn3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNet(nn.Module):
    """7x7/2 stem conv+BN+ReLU, 3x3/2 max pool, four stages (64..512 planes), global average pool, fc.

    Initialised like timm: Kaiming-normal convs and a zero gamma on each block's last BN, so every
    residual block starts as the identity.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = 64
        for i, (planes, depth) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            stage, inplanes = _make_stage(block, inplanes, planes, depth, stride)
            self.add_module(f"layer{i + 1}", stage)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.num_features = inplanes
        self._init_weights()

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.global_pool(self.forward_features(x)).flatten(1))

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)
            elif isinstance(m, Bottleneck):
                nn.init.zeros_(m.bn3.weight)


def _make_stage(
    block: type[BasicBlock] | type[Bottleneck], inplanes: int, planes: int, depth: int, stride: int
) -> tuple[nn.Sequential, int]:
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out))
    blocks = [block(inplanes, planes, stride, downsample)]
    blocks += [block(out, planes) for _ in range(depth - 1)]
    return nn.Sequential(*blocks), out


@register_model("resnet")
def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


@register_model("resnet")
def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model("resnet")
def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


@register_model("resnet", extra={"reparam": "acb"})
def resnet18_acb(num_classes: int = 1000, **kwargs) -> nn.Module:
    return convert_convs(resnet18(num_classes=num_classes, **kwargs), "acb", inplace=True)


@register_model("resnet", extra={"reparam": "dbb"})
def resnet18_dbb(num_classes: int = 1000, **kwargs) -> nn.Module:
    return convert_convs(resnet18(num_classes=num_classes, **kwargs), "dbb", inplace=True)


@register_model("resnet", extra={"reparam": "cmb"})
def resnet18_cmb(num_classes: int = 1000, **kwargs) -> nn.Module:
    return convert_convs(resnet18(num_classes=num_classes, **kwargs), "cmb", inplace=True)


@register_model("resnet", extra={"reparam": "refconv"})
def resnet18_refconv(num_classes: int = 1000, **kwargs) -> nn.Module:
    return convert_convs(resnet18(num_classes=num_classes, **kwargs), "refconv", inplace=True)
