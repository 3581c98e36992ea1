"""What ``int8_budget=auto`` keeps float and what its search costs, against ``int8_budget=0``, on zoo models at 224 px.

    nice -n 10 python bench/int8_budget_auto.py --models mobileone_s0,repvgg_a0 \
        --out bench/results/int8_budget_auto.json

Random conv weights, BN statistics measured on the 200 shared/data/imagenet-sample photos (the issue's hard int8
setup, ``proof.numerics.measure_bn_statistics``), then ``quant.prepare`` with equalization and bias correction (the
ONNX defaults) on those photos, once per budget: the thread's CPU seconds, the layers kept float and the simulated
int8 scores on prepare's held-out quarter. Accuracy on trained models: ``bench/int8_accuracy.py`` variants budget0 /
budget2 against the target's default.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from int8_accuracy import SHARED, cpu  # noqa: E402

from edgerep.images import Preprocess, list_images, load_images  # noqa: E402
from edgerep.proof.numerics import measure_bn_statistics  # noqa: E402
from edgerep.quant import prepare  # noqa: E402
from edgerep.reparam import reparameterize  # noqa: E402
from edgerep.zoo import create_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobileone_s0")
    ap.add_argument("--out", default="bench/results/int8_budget_auto.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pre = Preprocess.for_input((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 0.875)
    photos = load_images(list_images(SHARED / "data" / "imagenet-sample").files, pre).images
    result = {"command": "python bench/int8_budget_auto.py " + " ".join(argv or sys.argv[1:]), "cpu": cpu(),
              "torch": torch.__version__, "photos": f"{len(photos)} imagenet-sample at 224", "rows": []}
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = reparameterize(measure_bn_statistics(create_model(name), photos)).eval()
        for budget in (0, "auto"):
            t0 = time.thread_time()
            _, record = prepare(model, photos, equalize=True, bias_correction=True, budget=budget)
            row = {"model": name, "int8_budget": budget, "cpu_s": round(time.thread_time() - t0, 1),
                   "float_layers": record.get("budget_layers", []),
                   "float_mac_share": record.get("budget_float_mac_share"),
                   "held_out_int8": record.get("held_out_int8"), "dropped": record.get("dropped", [])}
            result["rows"].append(row)
            print(json.dumps({k: row[k] for k in ("model", "int8_budget", "cpu_s", "float_layers")}), flush=True)
    out = Path(args.out)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
