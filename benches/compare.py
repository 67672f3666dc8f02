"""Run pocketml against its peers in one process and print one table.

    python benches/compare.py                  # every suite
    python benches/compare.py --suite convert  # one suite
    python benches/compare.py --quick          # smaller shapes, for a smoke run

Writes the table (Markdown) and JSON to --out. Peers use the same threads as
pocketml (torch.set_num_threads).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

import pocketml  # noqa: E402
import suites  # noqa: E402
from harness import Machine, Report  # noqa: E402


def main(argv=None) -> int:
    available = sorted(m.name for m in pkgutil.iter_modules(suites.__path__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", action="append", choices=available, help="suite to run (repeatable; default all)")
    parser.add_argument("--threads", type=int, default=pocketml.get_num_threads(), help="threads for every peer")
    parser.add_argument("--quick", action="store_true", help="smaller shapes and fewer rounds")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory for table.md and results.json")
    args = parser.parse_args(argv)

    pocketml.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    probe_bytes = 1 << (28 if args.quick else 30)
    report = Report(Machine.measure(probe_bytes))
    for name in args.suite or available:
        importlib.import_module(f"suites.{name}").run(report, args.quick)
    report.settle_machine(Machine.measure(probe_bytes))

    table = report.table()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(report.to_json() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
