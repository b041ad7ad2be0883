"""`python -m kernels info [--json]`: what the running process computes with (see `kernels.info`)."""

from __future__ import annotations

import argparse
import json
import sys

from kernels import info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kernels", description="The compute layer of the appliance.")
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("info", help="CPU and SIMD flags, the faiss build, BLAS and threads, CUDA")
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args(argv)
    details = info.collect()
    print(json.dumps(details, indent=2) if args.json else info.render(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
