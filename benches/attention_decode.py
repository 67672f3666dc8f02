"""The attention suite's decode cases alone, through the same harness and machine
probes as compare.py (the full attention suite takes ~15 minutes; this ~1.5):

    python benches/attention_decode.py           # L = 4096 and 32768
    python benches/attention_decode.py --quick   # L = 4096
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import pocketml  # noqa: E402
from harness import Machine, Report  # noqa: E402
from suites import attention  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=pocketml.get_num_threads(), help="threads for every peer")
    parser.add_argument("--quick", action="store_true", help="L = 4096 only, fewer rounds")
    args = parser.parse_args(argv)
    pocketml.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    probe_bytes = 1 << (28 if args.quick else 30)
    report = Report(Machine.measure(probe_bytes))
    attention.run_decode(report, args.quick)
    report.settle_machine(Machine.measure(probe_bytes))
    print(report.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
