"""Speed figures of the LIDC pipeline (docs/performance.md, docs/model-card-lidc.md).

    python benchmarks/lidc_speed.py [--data ../shared/data/lidc-idri-slices] [--json FILE]

- ``reader_first_s``: decoding the whole set (every PNG) into a fresh cache folder;
- ``reader_cached_s``: opening it again (memory-mapped cache; the source's file list is
  still walked to notice changes);
- ``split_s``: the patient split of the cached set (ids only, nothing decoded);
- ``train_images_per_s_<amp>``: training throughput of recipes/lidc.toml's architecture at
  batch 8, 128x128, one thread, with bf16 autocast and with float32 (channels-last both); and
  which one ``amp = "auto"`` picks on this CPU;
- ``encode_ms``/``sample16_ms``: one test slice through the session (the model's cost per
  slice in evaluation and in the review).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_flags() -> str:
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return platform.processor()
    keep = [f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")]
    return " ".join(keep)


def train_ips(model_cfg, amp: str, steps: int = 12) -> float:
    import torch

    from napari_probunet.model.losses import elbo_loss
    from napari_probunet.model.network import ProbUNet
    from napari_probunet.training.precision import amp_context

    torch.manual_seed(0)
    model = ProbUNet(model_cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (8, 128, 128))
    times = []
    for i in range(steps):
        t = time.perf_counter()
        ctx, _ = amp_context(amp, "cpu")
        with ctx:
            out = model(x, y)
        loss = elbo_loss(out, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return 8 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/lidc-idri-slices")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    from napari_probunet.data.readers import open_cases
    from napari_probunet.device import auto_precision
    from napari_probunet.training.settings import load_recipe

    out: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_flags": cpu_flags(),
                 "threads": 1, "torch": torch.__version__}
    cache = Path(tempfile.mkdtemp(prefix="probunet-cache-"))
    old = os.environ.get("PROBUNET_CACHE_DIR")
    os.environ["PROBUNET_CACHE_DIR"] = str(cache)
    try:
        t = time.perf_counter()
        data = open_cases(args.data)
        out["reader_first_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        data = open_cases(args.data)
        out["reader_cached_s"] = round(time.perf_counter() - t, 2)
        out["slices"] = len(data)
        t = time.perf_counter()
        test = open_cases(args.data + "#part=test&fractions=0.75,0.05,0.2&seed=0&by=patient")
        out["split_s"] = round(time.perf_counter() - t, 2)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        if old is None:
            os.environ.pop("PROBUNET_CACHE_DIR", None)
        else:
            os.environ["PROBUNET_CACHE_DIR"] = old
    model_cfg, _ = load_recipe(ROOT / "napari_probunet" / "recipes" / "lidc.toml")
    for amp in ("bf16", "none"):
        out[f"train_images_per_s_{'fp32' if amp == 'none' else amp}"] = round(train_ips(model_cfg, amp), 2)
    out["amp_auto_picks"] = auto_precision("cpu")[0]
    from napari_probunet.model.network import ProbUNet
    from napari_probunet.session import Session

    session = Session(ProbUNet(model_cfg), "cpu")
    image = test[0].image
    times = []
    for _ in range(12):
        t = time.perf_counter()
        session.set_image(image)
        times.append(time.perf_counter() - t)
    out["encode_ms"] = round(1000 * statistics.median(times[2:]), 1)
    times = []
    for _ in range(12):
        t = time.perf_counter()
        session.sample(16, seed=0)
        times.append(time.perf_counter() - t)
    out["sample16_ms"] = round(1000 * statistics.median(times[2:]), 1)
    out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")



if __name__ == "__main__":
    main()
