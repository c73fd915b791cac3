#!/usr/bin/env python3
"""Turn the JSON of `unlearnbench benchmark` into markdown (default: docs/benchmarks/<gpu|cpu>-<device>.md).

    python scripts/benchmark_report.py benchmark.json                 # -> docs/benchmarks/gpu-nvidia-h100-80gb-hbm3.md
    python scripts/benchmark_report.py benchmark.json --out report.md
    python scripts/benchmark_report.py benchmark.json --out-dir $OUT     # $OUT/gpu-<device>.md
    python scripts/benchmark_report.py fp32.json bf16.json              # two runs of one device, merged

The tables put each method beside the paper's Table 1 means (unlearnbench/paper_numbers.csv), with the
SA/SAFEMax and SalUn/SAFEMax time ratios, SAFEMax's memory savings and the precisions side by side.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from unlearnbench.benchmark import default_markdown_path, write_markdown  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "reports",
        nargs="+",
        metavar="report",
        help="JSON written by `unlearnbench benchmark --out`; several (same code and device, different "
        "precisions) are merged into one markdown, each row saying which run it came from",
    )
    p.add_argument("--out", help="markdown file to write (default: docs/benchmarks/<gpu|cpu>-<device>.md)")
    p.add_argument("--out-dir", help="write <out-dir>/<gpu|cpu>-<device>.md instead")
    args = p.parse_args(argv)
    out = args.out
    try:
        if out is None and args.out_dir:
            report = json.loads(Path(args.reports[0]).read_text())
            out = Path(args.out_dir) / default_markdown_path(report).name
        out = write_markdown(args.reports, out)
    except (OSError, ValueError) as exc:  # a missing file, bad JSON, or runs that cannot be merged
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
