"""Models written the ways other codebases write them (timm, torchvision, mmcv), for the generic pass's tests.

Written here from the public APIs' shapes (class and attribute names, forward order), not copied: timm's
``BatchNormAct2d`` runs ``F.batch_norm`` on its own buffers with a ``torch._assert``; its ``ConvNormAct`` uses
a same-padding conv; its RepVGG and MobileOne blocks sum branches in their own orders with ``+=`` and int
zeros; torchvision's ``Conv2dNormActivation`` is an ``nn.Sequential``; mmcv's ``ConvModule`` stores its norm
under a computed name and can pad with a padding layer. Each model also says how many convolutions its
block-aware (timm ``reparameterize``-style) deploy form runs: ``deploy_convs``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


# ---- timm-style layers
class BatchNormAct2d(nn.BatchNorm2d):
    """timm's norm + act: functional batch norm on the module's buffers, then the activation."""

    def __init__(self, num_features: int, apply_act: bool = True, act_layer=nn.ReLU):
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act_layer() if apply_act else nn.Identity()

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        bn_training = self.training or self.running_mean is None
        x = F.batch_norm(x, self.running_mean if not self.training else None,
                         self.running_var if not self.training else None,
                         self.weight, self.bias, bn_training, self.momentum, self.eps)
        return self.act(self.drop(x))


def _same_pad(size: int, k: int, s: int, d: int) -> int:
    return max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """timm's dynamic 'SAME' padding (TensorFlow style): pad computed from the input size, then a valid conv."""

    def __init__(self, cin, cout, k, stride=1, dilation=1, groups=1, bias=True):
        super().__init__(cin, cout, k, stride, 0, dilation, groups, bias)

    def forward(self, x):
        ih, iw = x.size()[-2:]
        ph = _same_pad(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same_pad(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, (0, 0), self.dilation, self.groups)


class ConvNormAct(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, apply_act=True, same=False):
        super().__init__()
        if same:
            self.conv = Conv2dSame(cin, cout, k, stride, groups=groups, bias=False)
        else:
            self.conv = nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False)
        self.bn = BatchNormAct2d(cout, apply_act=apply_act)

    def forward(self, x):
        return self.bn(self.conv(x))


class TimmRepVggBlock(nn.Module):
    """timm's RepVggBlock in train form: identity BN, conv_kxk, conv_1x1, summed as timm orders them."""

    def __init__(self, cin, cout, stride=1, groups=1, same=False):
        super().__init__()
        self.identity = BatchNormAct2d(cout, apply_act=False) if cin == cout and stride == 1 else None
        self.conv_kxk = ConvNormAct(cin, cout, 3, stride, groups, apply_act=False, same=same)
        self.conv_1x1 = ConvNormAct(cin, cout, 1, stride, groups, apply_act=False)
        self.drop_path = nn.Identity()
        self.attn = nn.Identity()
        self.act = nn.ReLU()

    def forward(self, x):
        if self.identity is None:
            x = self.conv_1x1(x) + self.conv_kxk(x)
        else:
            identity = self.identity(x)
            x = self.conv_1x1(x) + self.conv_kxk(x)
            x = self.drop_path(x)
            x += identity
        return self.act(self.attn(x))


class TimmMobileOneBlock(nn.Module):
    """timm's MobileOneBlock in train form: conv_kxk (a ModuleList), conv_scale, identity BN, int zeros."""

    def __init__(self, cin, cout, k, stride=1, groups=1, num_conv_branches=1):
        super().__init__()
        self.identity = BatchNormAct2d(cout, apply_act=False) if cin == cout and stride == 1 else None
        self.conv_kxk = nn.ModuleList(
            [ConvNormAct(cin, cout, k, stride, groups, apply_act=False) for _ in range(num_conv_branches)]
        )
        self.conv_scale = ConvNormAct(cin, cout, 1, stride, groups, apply_act=False) if k > 1 else None
        self.se = nn.Identity()
        self.act = nn.GELU()

    def forward(self, x):
        identity_out = 0
        if self.identity is not None:
            identity_out = self.identity(x)
        scale_out = 0
        if self.conv_scale is not None:
            scale_out = self.conv_scale(x)
        out = scale_out + identity_out
        for rc in self.conv_kxk:
            out += rc(x)
        return self.act(self.se(out))


class TimmStyleNet(nn.Module):
    """A timm-like RepVGG / MobileOne stack with a same-padding stem and a head; block-aware: one conv per block."""

    def __init__(self, kind: str, same_stem: bool = True):
        super().__init__()
        self.stem = ConvNormAct(3, 8, 3, 2, same=same_stem)
        if kind == "repvgg":
            blocks = [TimmRepVggBlock(8, 16, 2), TimmRepVggBlock(16, 16), TimmRepVggBlock(16, 16, same=True)]
        else:
            blocks = [TimmMobileOneBlock(8, 8, 3, 2, groups=8, num_conv_branches=2), TimmMobileOneBlock(8, 16, 1),
                      TimmMobileOneBlock(16, 16, 3, groups=16, num_conv_branches=3), TimmMobileOneBlock(16, 16, 1)]
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Linear(16, 10)
        self.deploy_convs = 1 + len(blocks)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(x.mean((2, 3)))


class TimmRepMixer(nn.Module):
    """timm FastViT's RepMixer: ``x + layer_scale * (mixer(x) - norm(x))``, mixer and norm MobileOne blocks
    without activation (norm: the identity BN alone), then a RepCPE-style ``pe(x) + x`` depthwise 7x7."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = TimmMobileOneBlock(dim, dim, 3, groups=dim, num_conv_branches=0)
        self.norm.conv_scale = None  # use_scale_branch=False
        self.mixer = TimmMobileOneBlock(dim, dim, 3, groups=dim, num_conv_branches=1)
        self.norm.act = self.mixer.act = nn.Identity()
        self.layer_scale = nn.Parameter(1e-1 * torch.rand(dim, 1, 1) + 0.5)
        self.pe = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)

    def forward(self, x):
        x = x + self.layer_scale * (self.mixer(x) - self.norm(x))
        return self.pe(x) + x


# ---- torchvision-style
class Conv2dNormActivation(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, activation_layer=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


class TorchvisionStyleBlock(nn.Module):
    """Sequential-wrapped branches summed with the input; the 1x1 branch's Sequential nests another."""

    def __init__(self, c):
        super().__init__()
        self.branch3 = Conv2dNormActivation(c, c, 3, activation_layer=None)
        self.branch1 = nn.Sequential(nn.Sequential(Conv2dNormActivation(c, c, 1, activation_layer=None)))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(x + self.branch1(x) + self.branch3(x))  # identity first: sum order is free


# ---- mmcv-style
class ConvModule(nn.Module):
    """mmcv's ConvModule: norm stored under a computed name, optional padding layer (zeros or reflect)."""

    def __init__(self, cin, cout, k, padding=0, padding_mode="zeros", act=True, order=("conv", "norm", "act")):
        super().__init__()
        self.with_explicit_padding = padding_mode != "zeros"
        if self.with_explicit_padding:
            self.padding_layer = nn.ReflectionPad2d(padding)
        self.conv = nn.Conv2d(cin, cout, k, padding=0 if self.with_explicit_padding else padding, bias=False)
        self.norm_name = "bn"
        self.add_module(self.norm_name, nn.BatchNorm2d(cout))
        self.activate = nn.ReLU() if act else None
        self.order = order

    @property
    def norm(self):
        return getattr(self, self.norm_name)

    def forward(self, x):
        for layer in self.order:
            if layer == "conv":
                if self.with_explicit_padding:
                    x = self.padding_layer(x)
                x = self.conv(x)
            elif layer == "norm":
                x = self.norm(x)
            elif layer == "act" and self.activate is not None:
                x = self.activate(x)
        return x


class MmcvStyleBlock(nn.Module):
    """Branches as ConvModules, summed with Python's ``sum`` (0 + a + b + c); ``reflect`` makes one inexact."""

    def __init__(self, c, reflect=False):
        super().__init__()
        self.branches = nn.ModuleList([
            ConvModule(c, c, 3, 1, "reflect" if reflect else "zeros", act=False),
            ConvModule(c, c, 1, act=False),
            ConvModule(c, c, 5, 2, act=False),
        ])

    def forward(self, x):
        return F.relu(sum(b(x) for b in self.branches))


# ---- module reuse, layer scale, concat / chunk, a BN on batch statistics
class Shared(nn.Module):
    """One RepVGG block applied twice (module reuse), then a layer scale and a division by a constant."""

    def __init__(self, c):
        super().__init__()
        self.block = TimmRepVggBlock(c, c)
        self.gamma = nn.Parameter(torch.rand(c, 1, 1) + 0.5)
        self.proj = ConvNormAct(c, c, 1, apply_act=False)

    def forward(self, x):
        x = self.block(self.block(x))
        return self.proj(x) * self.gamma / 2.0 + x


class InceptionStyle(nn.Module):
    """Parallel dense convs concatenated along channels; then a conv's output chunked and summed.

    ``kernels`` of one size concatenate into one conv of the same weights; of several sizes the merged
    kernel would be the largest for every branch (more MACs), so the pass leaves them.
    """

    def __init__(self, c, kernels=(3, 3, 3)):
        super().__init__()
        self.b1 = ConvNormAct(c, c, kernels[0], apply_act=False)
        self.b3 = ConvNormAct(c, c, kernels[1], apply_act=False)
        self.b5 = nn.Sequential(nn.Conv2d(c, c, kernels[2], padding=kernels[2] // 2), nn.BatchNorm2d(c))
        self.mix = nn.Conv2d(3 * c, 2 * c, 3, padding=1)
        self.deploy_convs = 2 if len(set(kernels)) == 1 else 4

    def forward(self, x):
        y = F.relu(torch.cat([self.b1(x), self.b3(x), self.b5(x)], 1))
        a, b = self.mix(y).chunk(2, dim=1)
        return a - b


class TrainingBN(nn.Module):
    """A branch whose functional batch norm always uses batch statistics (training=True)."""

    def __init__(self, c):
        super().__init__()
        self.conv3 = nn.Conv2d(c, c, 3, padding=1)
        self.conv1 = nn.Conv2d(c, c, 1)
        self.norm = nn.BatchNorm2d(c)

    def forward(self, x):
        y = F.batch_norm(self.conv1(x), None, None, self.norm.weight, self.norm.bias, True)
        return self.conv3(x) + y


class StyleZoo(nn.Module):
    """Every style above in one network, with the conv count a block-aware conversion reaches."""

    def __init__(self, c=8, reflect=False):
        super().__init__()
        self.stem = ConvNormAct(3, c, 3, 1, same=True)
        self.tv = TorchvisionStyleBlock(c)
        self.mm = MmcvStyleBlock(c, reflect)
        self.shared = Shared(c)
        self.incep = InceptionStyle(c)
        # stem 1; tv 1; mm 1 (3 if reflect: the sum is merged as written, 0 + reflect + b1 + b2, so once the
        # first term cannot merge the later ones are not re-associated); shared: block
        # twice + (proj merged with the residual) = 3; inception: concat -> 1, mix 1
        self.deploy_convs = 1 + 1 + (3 if reflect else 1) + 3 + 2

    def forward(self, x):
        return self.incep(self.shared(self.mm(self.tv(self.stem(x)))))
