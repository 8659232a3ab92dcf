"""``probunet bench``: speed and memory of the hot paths (figures and keys in
:mod:`napari_probunet.training.bench`), printed as a table with the targets, or as JSON."""

from __future__ import annotations

import argparse
import json

from napari_probunet.device import resolve_device
from napari_probunet.training.bench import bench_refine, bench_session, bench_training


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``probunet bench``."""
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-training", action="store_true",
                        help="leave out the training figures")
    parser.add_argument("--skip-ged", action="store_true", help="leave out the GED figure")
    parser.add_argument("--skip-refine", action="store_true",
                        help="leave out the refine-by-clicks figures (bundled lidc model)")


def run(args: argparse.Namespace) -> int:
    """Measure and print; returns the exit code."""
    import torch  # lazy: `probunet bench --help` does not load torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = str(resolve_device(args.device))
    results = bench_session(device, args.repeats)
    if not args.skip_refine:
        results.update(bench_refine(device, args.repeats))
    if not args.skip_ged:
        from napari_probunet.review.metrics import ged_benchmark_seconds  # lazy: scipy, 0.5 s

        results["ged_s_1000x100x4_128"] = ged_benchmark_seconds()
    if not args.skip_training:
        results.update(bench_training(device))
    results["torch_threads"] = torch.get_num_threads()
    results["torch"] = torch.__version__
    if args.json:
        print(json.dumps(results))
        return 0
    targets = {"sample100_ms_128": "<= 100", "decode_ms_256": "<= 15",
               "unsplit_over_split_100": ">= 4", "ged_s_1000x100x4_128": "<= 10",
               "train_images_per_s_128_b8": ">= 5", "refine16_ms_128_lidc": "<= 500",
               "refine16_3clicks_ms_128_lidc": "<= 500"}
    print(f"{'measure':<36}{'value':>12}  target")
    for key, value in results.items():
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        print(f"{key:<36}{shown:>12}  {targets.get(key, '')}")
    return 0
