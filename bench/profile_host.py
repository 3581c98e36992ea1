"""Measure artifacts on this host and predict them for phone profiles; write everything as JSON.

    python bench/profile_host.py model.onnx model.tflite --threads 1,2 --devices pixel4,pixel7 \\
        --out bench/results/profile_host.json

Per artifact: the host measurement (``edgerep.profile.host.profile_artifact``: median, p90, spread per thread
count, peak memory, the CPU) and, per device profile, the *predicted* latency at 1 thread and at 4 big-core
threads with the predictor's leave-one-out error. The load average before and after each measurement is
recorded: this machine is shared, so absolute host times are noisy; the results quote medians and spreads and
nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from edgerep.errors import EdgerepError
from edgerep.profile.graph_cost import graph_cost
from edgerep.profile.host import profile_artifact
from edgerep.profile.predict import leave_one_out, predict
from edgerep.profile.profiles import get_profile


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifacts", nargs="+", help=".onnx / .tflite files")
    p.add_argument("--threads", default="1", help="host thread counts, comma-separated")
    p.add_argument("--devices", default="pixel4,pixel7", help="profiles to predict for, comma-separated")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--no-host", action="store_true", help="predict only")
    p.add_argument("--out", default="bench/results/profile_host.json")
    args = p.parse_args(argv)
    threads = tuple(int(t) for t in args.threads.split(","))
    devices = [get_profile(d) for d in args.devices.split(",")]
    results = []
    for artifact in args.artifacts:
        row: dict = {"artifact": artifact}
        try:
            cost = graph_cost(artifact)
            row["graph"] = {"macs": cost.macs, "ops": len(cost.costed), "precision": cost.precision,
                            "input_shape": list(cost.input_shape)}
            row["predicted"] = [predict(cost, d, t).to_dict(layers=3) for d in devices for t in (1, min(4, d.cores))]
            if not args.no_host:
                load = os.getloadavg()
                row["measured"] = profile_artifact(artifact, threads, rounds=args.rounds).to_dict()
                row["loadavg_before_after"] = [load[0], os.getloadavg()[0]]
        except EdgerepError as exc:  # keep the other artifacts' results, mark this one
            row["error"] = str(exc)
        results.append(row)
        print(f"{artifact}: done", file=sys.stderr)
    out = {"when": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "loo": {p: leave_one_out(p) for p in ("fp32", "int8")},
           "results": results}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
        json.dump(out, f, indent=2)
    os.replace(f.name, path)
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
