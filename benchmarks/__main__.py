"""`python -m benchmarks [--quick] [--json FILE] [--plot FILE]`: the same run as `emu bench`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.suite import FULL, QUICK, run, wide_console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer, shorter rounds (< 3 minutes)")
    parser.add_argument("--json", type=Path, default=Path("bench.json"), help="JSON output file")
    parser.add_argument("--plot", type=Path, default=Path("bench.png"), help="PNG plot file")
    args = parser.parse_args(argv)
    run(QUICK if args.quick else FULL, args.json, args.plot, wide_console())
    return 0


if __name__ == "__main__":
    sys.exit(main())
