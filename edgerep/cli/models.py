"""`edgerep models`: the zoo with sizes in train and deploy form."""

from __future__ import annotations

import argparse
import json

ORDER = 90


def register(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser(
        "models",
        help="list zoo models with parameters and MACs in train and deploy form",
        description="List the model zoo. Sizes are computed on PyTorch's meta device: no weights are allocated.",
    )
    m.add_argument("--family", help="only this family (e.g. repvgg, mobileone, repghostnet)")
    m.add_argument("--json", action="store_true", help="print JSON on stdout")
    m.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tables import human, table
    from ..zoo.summary import summarize_zoo

    rows = summarize_zoo(args.family)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        table(
            ["model", "family", "input", "params train", "params deploy", "MACs train", "MACs deploy", "blocks"],
            [
                (r["name"], r["family"], "x".join(map(str, r["input_size"])), human(r["params_train"]),
                 human(r["params_deploy"]), human(r["macs_train"]), human(r["macs_deploy"]), r["blocks"])
                for r in rows
            ],
            right={3, 4, 5, 6, 7},
        )
    )
    return 0


