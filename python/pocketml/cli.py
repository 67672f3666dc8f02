"""The `pocketml` command line."""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def _format_info(info: dict) -> str:
    rows = [
        ("version", info["version"]),
        ("build", f"{info['build_type']} ({info['compiler']})"),
        ("architecture", info["architecture"]),
        ("ISA variants compiled", ", ".join(info["compiled_isas"])),
        ("ISA variants this CPU runs", ", ".join(info["supported_isas"])),
        ("ISA selected", info["active_isa"]),
        ("CPU features", ", ".join(info["cpu_features"]) or "-"),
        ("threads", str(info["num_threads"])),
        ("backend cpu", "yes"),
        ("backend metal", f"yes ({info['metal_device']})" if info["metal_available"] else "no"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def cmd_info(args) -> int:
    from pocketml import info

    data = info()
    print(json.dumps(data, indent=2) if args.json else _format_info(data))
    return 0


def cmd_selftest(args) -> int:
    """Converts a tensor through every ISA variant, checks them against the scalar
    reference and prints the throughput of each."""
    from pocketml import convert, supported_isas, use_isa

    rng = np.random.default_rng(0)
    x = (rng.standard_normal(args.elements) * 100).astype(np.float32)
    with use_isa("scalar"):
        reference = convert(x, "fp16")
    print(f"fp32 -> fp16, {args.elements:,} elements")
    ok = True
    for isa in supported_isas():
        with use_isa(isa):
            out = convert(x, "fp16")
            start = time.perf_counter()
            for _ in range(args.repeats):
                convert(x, "fp16")
            seconds = (time.perf_counter() - start) / args.repeats
        same = np.array_equal(out.view(np.uint16), reference.view(np.uint16))
        ok &= same
        gbps = x.nbytes * 1.5 / seconds / 1e9
        print(f"  {isa:<7} {seconds * 1e3:8.2f} ms  {gbps:6.1f} GB/s  {'matches scalar' if same else 'MISMATCH'}")
    return 0 if ok else 1


def cmd_golden(args) -> int:
    from pocketml.export.standard_bundles import write_standard_bundles

    for path in write_standard_bundles(args.out, overwrite=True):
        print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketml", description="pocketml: native kernels for on-device ML.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show version, build, CPU features and the selected kernel variant")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("selftest", help="run the conversion kernel on every ISA variant and check it")
    p.add_argument("--elements", type=int, default=1 << 22, help="tensor size (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions (default: %(default)s)")
    p.set_defaults(func=cmd_selftest)

    p = sub.add_parser("golden", help="write the golden bundles the Swift validator checks")
    p.add_argument("--out", required=True, help="directory to write the bundles into")
    p.set_defaults(func=cmd_golden)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"pocketml: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
