"""Fuse thousands of random block configurations and report the worst relative error per block.

    python bench/fusion_sweep.py --configs 10000 --out bench/results/fusion_sweep.json

Each configuration draws a block type and its geometry (channels, groups incl. depthwise, stride,
padding, dilation, kernel sizes, branch counts), randomizes every BatchNorm's statistics, and compares
the eval-mode training form with its fused deploy form on a random input in fp32 (what users run) and
in fp64 (which isolates the math from rounding). Configurations a block refuses at construction
(ValueError) are counted, not silently dropped; those whose train form loses digits in fp32 by itself
(see CONDITIONING_LIMIT) are counted and their fp32 error is reported apart.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import reparameterize
from edgerep.reparam.blocks.acb import ACBlock
from edgerep.reparam.blocks.cmb import CircularMaskBlock
from edgerep.reparam.blocks.dbb import DiverseBranchBlock
from edgerep.reparam.blocks.mobileone import MobileOneBlock
from edgerep.reparam.blocks.qarepvgg import QARepVGGBlock
from edgerep.reparam.blocks.refconv import RefConv
from edgerep.reparam.blocks.repghost import RepGhostModule
from edgerep.reparam.blocks.replk import ReparamLargeKernelConv
from edgerep.reparam.blocks.repmlp import RepMLPBlock
from edgerep.reparam.blocks.repvgg import RepVGGBlock
from edgerep.reparam.blocks.resrep import ResRepPair

Sample = tuple[nn.Module, tuple[int, ...], dict]


def _channels(r: random.Random) -> tuple[int, int, int]:
    """(in, out, groups): dense, grouped or depthwise."""
    kind = r.choice(["dense", "grouped", "depthwise"])
    if kind == "depthwise":
        c = r.randint(1, 8)
        return c, c, c
    g = 1 if kind == "dense" else r.choice([2, 3, 4])
    cin = g * r.randint(1, 3)
    cout = g * r.randint(1, 3)
    return cin, cout, g


def _hw(r: random.Random, lo: int = 3, hi: int = 12) -> tuple[int, int]:
    return r.randint(lo, hi), r.randint(lo, hi)


def _conv_like(r: random.Random, cls, kernels: list[int], **extra) -> Sample:
    cin, cout, g = _channels(r)
    cfg = dict(in_channels=cin, out_channels=cout, kernel_size=r.choice(kernels), stride=r.choice([1, 2]),
               dilation=r.choice([1, 1, 2, 3]), groups=g, **extra)
    reach = (cfg["kernel_size"] - 1) * cfg["dilation"] + 1  # so that even an unpadded conv has an output
    return cls(**cfg), (cin, *_hw(r, reach, reach + 8)), cfg


def repvgg(r: random.Random) -> Sample:
    return _conv_like(r, RepVGGBlock, [1, 3, 5])


def qarepvgg(r: random.Random) -> Sample:
    return _conv_like(r, QARepVGGBlock, [1, 3, 5])


def mobileone(r: random.Random) -> Sample:
    return _conv_like(r, MobileOneBlock, [1, 3, 5], num_branches=r.randint(1, 4))


def acb(r: random.Random) -> Sample:
    k = r.choice([3, 5, 7])
    block, shape, cfg = _conv_like(r, ACBlock, [k], padding=r.choice([None, None, 0, k // 2, k // 2 + 1]))
    return block, shape, cfg


def dbb(r: random.Random) -> Sample:
    cin, cout, g = _channels(r)
    cfg = dict(in_channels=cin, out_channels=cout, kernel_size=r.choice([1, 3, 5]), stride=r.choice([1, 2]),
               dilation=r.choice([1, 1, 2]), groups=g)
    if g < cin and r.random() < 0.3:
        cfg["internal_channels"] = g * r.randint(1, 3)
    return DiverseBranchBlock(**cfg), (cin, *_hw(r)), cfg


def replk(r: random.Random) -> Sample:
    cin, cout, g = _channels(r)
    k = r.choice([7, 9, 13])
    cfg = dict(in_channels=cin, out_channels=cout, kernel_size=k, small_kernel=r.choice([3, 5]),
               stride=r.choice([1, 2]), dilation=r.choice([1, 2]), groups=g)
    return ReparamLargeKernelConv(**cfg), (cin, *_hw(r, 3, 16)), cfg


def cmb(r: random.Random) -> Sample:
    k = r.choice([3, 5, 7])
    return _conv_like(r, CircularMaskBlock, [k], padding=r.choice([None, None, 0, k // 2]))


def refconv(r: random.Random) -> Sample:
    k = r.choice([1, 3, 5])
    return _conv_like(r, RefConv, [k], padding=r.choice([None, None, 0]), norm=r.random() < 0.7,
                      bias=r.random() < 0.3, map_k=r.choice([1, 3]))


def repghost(r: random.Random) -> Sample:
    cin, cout = r.randint(1, 8), r.randint(1, 8)
    cfg = dict(in_channels=cin, out_channels=cout, kernel_size=r.choice([1, 3]), dw_size=r.choice([3, 5]),
               stride=r.choice([1, 2]), relu=r.random() < 0.5)
    return RepGhostModule(**cfg), (cin, *_hw(r)), cfg


def resrep(r: random.Random) -> Sample:
    cin, mid, cout = r.randint(1, 6), r.randint(2, 8), r.randint(1, 6)
    k = r.choice([1, 3, 5])
    stride, dilation = r.choice([1, 2]), r.choice([1, 2])
    conv = nn.Conv2d(cin, mid, k, stride, k // 2 * dilation, dilation, bias=r.random() < 0.3)
    consumer = nn.Conv2d(mid, cout, r.choice([1, 3]), padding="same")
    pair = ResRepPair(conv, nn.BatchNorm2d(mid), consumer)
    zero_rows = r.sample(range(mid), r.randint(0, mid - 1))
    with torch.no_grad():
        pair.compactor.weight.add_(torch.randn_like(pair.compactor.weight) * 0.3)
        pair.compactor.weight[zero_rows] = 0
    cfg = dict(cin=cin, mid=mid, cout=cout, kernel=k, stride=stride, dilation=dilation, zero_rows=len(zero_rows))
    return pair, (cin, *_hw(r, 4, 12)), cfg


def repmlp(r: random.Random) -> Sample:
    s = r.choice([1, 2])
    c = s * r.randint(1, 3)
    h, w = r.randint(2, 5), r.randint(2, 5)
    cfg = dict(channels=c, h=h, w=w, kernel_sizes=tuple(sorted(r.sample([1, 3, 5], r.randint(0, 3)))),
               sharesets=s, gp_reduction=r.choice([None, 1, 2]) if c >= 2 else None)
    return RepMLPBlock(**cfg), (c, h * r.randint(1, 3), w * r.randint(1, 3)), cfg


SAMPLERS: dict[str, Callable[[random.Random], Sample]] = {
    "RepVGG": repvgg,
    "QARepVGG": qarepvgg,
    "MobileOne": mobileone,
    "RepGhost": repghost,
    "ACB": acb,
    "DBB": dbb,
    "RepLK": replk,
    "CMB": cmb,
    "RefConv": refconv,
    "ResRep": resrep,
    "RepMLP": repmlp,
}


# A configuration whose train form in fp32 is further than this from its own fp64 output has lost
# digits to fp32 itself (tiny outputs after cancellation between branches): there only fp64 can
# judge the fusion, and its fp32 error is reported apart.
CONDITIONING_LIMIT = 1e-6


@dataclass
class BlockStats:
    configs: int = 0
    refused: int = 0
    ill_conditioned: int = 0
    worst_rel_fp32: float = 0.0
    worst_rel_fp32_ill_conditioned: float = 0.0
    worst_rel_fp64: float = 0.0
    worst_config: dict = field(default_factory=dict)


@torch.no_grad()
def run_sweep(configs: int, seed: int = 0, blocks: list[str] | None = None, progress: bool = False) -> dict:
    names = blocks or list(SAMPLERS)
    unknown = set(names) - set(SAMPLERS)
    if unknown:
        raise SystemExit(f"unknown blocks {sorted(unknown)}; known: {', '.join(SAMPLERS)}")
    torch.manual_seed(seed)  # blocks initialise their weights from the global generator
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    stats = {n: BlockStats() for n in names}
    t0 = time.perf_counter()
    for i in range(configs):
        name = names[i % len(names)]
        st = stats[name]
        while True:
            try:
                block, shape, cfg = SAMPLERS[name](rng)
                break
            except ValueError:
                st.refused += 1
        randomize_bn(block, gen).eval()
        x = torch.randn(2, *shape, generator=gen)
        train32, deploy32 = block(x), reparameterize(block)(x)
        block64 = block.double()
        train64 = block64(x.double())
        st.worst_rel_fp64 = max(st.worst_rel_fp64, output_error(train64, reparameterize(block64)(x.double())).rel)
        rel32 = output_error(train32, deploy32).rel
        if output_error(train64, train32).rel > CONDITIONING_LIMIT:
            st.ill_conditioned += 1
            st.worst_rel_fp32_ill_conditioned = max(st.worst_rel_fp32_ill_conditioned, rel32)
        elif rel32 > st.worst_rel_fp32:
            st.worst_rel_fp32 = rel32
            st.worst_config = dict(cfg) | {"input": list(shape)}
        st.configs += 1
        if progress and (i + 1) % 500 == 0:
            print(f"  {i + 1}/{configs} configurations, {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return {
        "configs": configs,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "conditioning_limit": CONDITIONING_LIMIT,
        "worst_rel_fp32": max(s.worst_rel_fp32 for s in stats.values()),
        "worst_rel_fp64": max(s.worst_rel_fp64 for s in stats.values()),
        "ill_conditioned": sum(s.ill_conditioned for s in stats.values()),
        "blocks": {n: vars(s) for n, s in stats.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--blocks", nargs="*", help=f"subset of: {', '.join(SAMPLERS)}")
    p.add_argument("--out", type=Path, help="write the JSON result here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = run_sweep(args.configs, args.seed, args.blocks, progress=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(f"{'block':<10} {'configs':>7} {'refused':>7} {'worst rel fp32':>15} {'worst rel fp64':>15}"
          f" {'ill-conditioned':>16} {'their worst fp32':>17}")
    for name, s in result["blocks"].items():
        print(f"{name:<10} {s['configs']:>7} {s['refused']:>7} {s['worst_rel_fp32']:>15.3g} {s['worst_rel_fp64']:>15.3g}"
              f" {s['ill_conditioned']:>16} {s['worst_rel_fp32_ill_conditioned']:>17.3g}")
    print(f"{result['configs']} configurations in {result['seconds']} s; worst fp32 {result['worst_rel_fp32']:.3g}"
          f" ({result['ill_conditioned']} ill-conditioned in fp32 itself, judged in fp64); worst fp64"
          f" {result['worst_rel_fp64']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
