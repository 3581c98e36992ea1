"""`edgerep deploy`: fuse a training-form checkpoint and prove the deploy form equivalent."""

from __future__ import annotations

import argparse
import json
import time

from ..errors import BadInputError
from .common import add_geometry, geometry, positive_float, renamed, status

ORDER = 10

EPILOG = """\
examples:
  edgerep deploy                                   # the shipped default model and photos
  edgerep deploy repvgg_a0 -c repvgg_a0.pth -o repvgg_a0_deploy.pt
  edgerep deploy repvgg_a0 -c RepVGG-A0-train.pth --checkpoint-layout original --images photos/ --json
  edgerep deploy mobileone_s0 -c mobileone_s0.pth --generic   # block-agnostic graph pass, verify only
  edgerep deploy model.pt2 -o model_deploy.pt2     # any torch.export.save'd program, no model code needed

The checkpoint may come from timm, from the original papers' repositories or from edgerep; its layout
is detected from its keys (force one with --checkpoint-layout). It must be in training form: a deploy-form
checkpoint is already fused (give it to `edgerep export`). The deploy checkpoint is written only when
every check passes (relative error = max|deploy - train| / max|train| <= --rtol).
"""


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "deploy",
        help="fuse every re-param block into its deploy form and prove equivalence",
        description="Load a training-form checkpoint, fuse every re-param block, verify the deploy form "
        "against the training form (random inputs, real photos, the checkpoint's own reference outputs), "
        "and write the deploy checkpoint.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("model", nargs="?", help="zoo model name (see `edgerep models`), or a .pt2 program "
                   "(torch.export.save); default: the shipped demo model")
    d.add_argument("-c", "--checkpoint", help="training-form checkpoint (.pt/.pth); default: the shipped demo checkpoint")
    d.add_argument("-o", "--output", help="where to write the deploy checkpoint (atomically); omit to only verify")
    d.add_argument(
        "--checkpoint-layout", choices=["auto", "timm", "original", "edgerep"], default="auto",
        help="key naming of the checkpoint: timm's, the original paper repo's, or edgerep's (default: detected)",
    )
    renamed(d, "--layout", "--checkpoint-layout")
    d.add_argument("--images", help="folder of real photos for the check (default: the shipped CIFAR-10 sample)")
    d.add_argument("--no-images", action="store_true", help="check on random inputs only")
    d.add_argument("--rtol", type=positive_float, default=1e-5, help="tolerated relative error (default: 1e-5, fp32)")
    d.add_argument("--no-latency", action="store_true", help="skip the train-vs-deploy torch timing")
    d.add_argument(
        "--generic", action="store_true",
        help="fuse with the graph pass that knows no block class (traces the model, merges every exact "
        "branch set and conv chain); verifies only, writes no checkpoint",
    )
    d.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    add_geometry(d)
    d.set_defaults(func=run)



def run(args: argparse.Namespace) -> int:
    from .. import defaults
    from ..api import deploy_checkpoint, is_program
    from ..proof.report import format_deploy_report

    name, checkpoint = args.model, args.checkpoint
    if is_program(name) and checkpoint is None:  # a .pt2 program: any architecture, no zoo name
        name, checkpoint = None, name
    if name is None and checkpoint is None:
        name, checkpoint = defaults.default_model_name(), str(defaults.default_model_path())
    elif checkpoint is None:
        raise BadInputError(f"give the checkpoint of {name} with --checkpoint PATH (see `edgerep deploy --help`)")
    images = None if args.no_images else (args.images or defaults.default_images_dir())
    status(f"deploying {name + ' from ' if name else ''}{checkpoint}")
    t0 = time.perf_counter()
    result = deploy_checkpoint(
        name,
        checkpoint,
        output=args.output,
        overrides=geometry(args),
        checkpoint_layout=None if args.checkpoint_layout == "auto" else args.checkpoint_layout,
        rtol=args.rtol,
        images=images,
        latency=not args.no_latency,
        generic=args.generic,
    )
    src = result.source
    if args.json:
        print(json.dumps({
            "ok": True,
            "model": src.model,
            "checkpoint": str(checkpoint),
            "layout": src.layout,
            "sha256": src.sha256,
            "output": str(result.output) if result.output else None,
            "seconds": round(time.perf_counter() - t0, 2),
            "report": result.report.to_dict(),
        }, indent=2))
        return 0
    print(f"{src.model}: {checkpoint} (layout {src.layout}, {src.form} form, {src.num_classes} classes)")
    print(format_deploy_report(result.report))
    for item in result.report.unmerged:
        print(f"left unmerged: {item}")
    hint = " (--generic writes no checkpoint)" if args.generic else "; add -o PATH to write the deploy checkpoint"
    print(f"wrote {result.output}" if result.output else f"verified only{hint}")
    return 0


