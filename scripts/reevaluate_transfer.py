#!/usr/bin/env python
"""Evaluate again, from their saved runs, the rows of some encoders in a transfer results file
(results/cross_arch.json, results/<name>.json), after a change to inference that leaves training as it
was; rows whose run directory is gone are left as they were and listed.

    python scripts/reevaluate_transfer.py results/cross_arch.json --encoders sne --device cpu

The training-free reference statistics of its zoos are computed again too; with --references-only, nothing else.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from sne.bench.transfer import reevaluate_transfer
from sne.errors import SneError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a transfer benchmark's results file")
    parser.add_argument("--encoders", default="sne", help="comma-separated encoder names")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-plots", action="store_true", help="keep the rows' plots as they were")
    parser.add_argument("--references-only", action="store_true",
                        help="only compute the zoos' training-free reference statistics again")
    args = parser.parse_args()
    command = "python " + shlex.join(["scripts/reevaluate_transfer.py", *sys.argv[1:]])
    try:
        path, gone = reevaluate_transfer(args.results, [] if args.references_only else args.encoders.split(","), args.device, command,
                                         plots=not args.no_plots)
    except SneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"re-evaluated rows written to {path}; regenerate docs with 'make results'")
    for run in gone:
        print(f"run gone, row left as it was: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
