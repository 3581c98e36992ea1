"""Deploy every zoo model (random weights, random BN statistics) and report error, size and graph per model.

    python bench/zoo_deploy.py --size 96 --out bench/results/zoo_deploy.json

For each model: relative error of the deploy form against the train form on random inputs in fp32 and
in fp64, and the train form's own fp32 error against its fp64 result ("conditioning": a random deep
network can lose digits in fp32 by itself, e.g. MobileOne-S4, whose SE gates see activations of 1e4;
no deploy form can then be closer than that); parameters, MACs at 224x224, and the traced deploy
graph by op kind, with the BatchNorm2d and add nodes left in it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from edgerep.proof.metrics import count_macs, count_nodes, count_params
from edgerep.proof.numerics import output_error, randomize_bn
from edgerep.reparam import count_blocks, reparameterize
from edgerep.zoo import create_model, get_spec, list_models


@torch.no_grad()
def deploy_model(name: str, size: int = 96, seed: int = 0) -> dict:
    torch.manual_seed(seed)  # the zoo's own initialisation draws from the global generator
    gen = torch.Generator().manual_seed(seed)
    model = randomize_bn(create_model(name), gen).eval()
    deployed = reparameterize(model)
    x = torch.randn(2, 3, size, size, generator=gen)
    ref32 = model(x)
    err = output_error(ref32, deployed(x))
    nodes = count_nodes(deployed) or {}
    params_train, params_deploy = count_params(model), count_params(deployed)
    model64 = model.double()
    ref64 = model64(x.double())
    err64 = output_error(ref64, reparameterize(model64)(x.double()))
    conditioning = output_error(ref64, ref32).rel
    spec = get_spec(name)
    return {
        "model": name,
        "family": spec.family,
        "blocks": sum(count_blocks(model).values()),
        "rel": err.rel,
        "max_abs": err.max_abs,
        "rel_fp64": err64.rel,
        "train_fp32_vs_fp64": conditioning,
        "input": [2, 3, size, size],
        "params_train": params_train,
        "params_deploy": params_deploy,
        "macs_deploy_224": count_macs(deployed, spec.input_size),
        "nodes_train": sum((count_nodes(model) or {}).values()),
        "nodes_deploy": sum(nodes.values()),
        "deploy_graph": dict(nodes),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="default: every zoo model")
    p.add_argument("--size", type=int, default=96, help="input height/width of the check (default 96)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    rows = []
    for name in args.models or list_models():
        rows.append(deploy_model(name, args.size))
        r = rows[-1]
        g = r["deploy_graph"]
        print(f"{name:<18} blocks {r['blocks']:>3}  rel fp32 {r['rel']:.2g} fp64 {r['rel_fp64']:.2g}"
              f" (train fp32 vs fp64 {r['train_fp32_vs_fp64']:.2g})  nodes {r['nodes_train']:>4} -> {r['nodes_deploy']:>4}"
              f"  (BatchNorm2d {g.get('BatchNorm2d', 0)}, add {g.get('add', 0)})", flush=True)
    result = {"seconds": round(time.perf_counter() - t0, 1), "torch": torch.__version__,
              "worst_rel": max(r["rel"] for r in rows),
              "worst_rel_fp64": max(r["rel_fp64"] for r in rows), "models": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(rows)} models in {result['seconds']} s; worst relative error fp32 {result['worst_rel']:.3g},"
          f" fp64 {result['worst_rel_fp64']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
