"""``probunet bench``: speed and memory of the hot paths, measured on the default configuration.

Every figure comes from one run on one machine, so ratios (split vs unsplit decoding, bf16
vs fp32 training) are fair even on a shared, noisy computer. Times are medians over
repeats after a warm-up. Weights are random (seeded): speed does not depend on training.

Keys (``--json`` prints them as one object):

- ``encode_ms_128``: ``set_image`` on a 128x128 image (U-Net + prior, once per image).
- ``sample16_ms_128``, ``sample100_ms_128``: ``sample(n)`` after encoding (fcomb only).
- ``decode_ms_256``: ``decode(z)`` of one latent on a 256x256 image (the explorer's drag).
- ``unsplit_over_split_100``: 100 latents decoded one at a time through the plain fcomb
  (convolutions on [F; z]) divided by ``sample(100)``.
- ``peak_rss_mb_sample100_512``: peak resident memory of a fresh process that loads the model,
  encodes a 512x512 image and samples 100 hypotheses.
- ``refine16_ms_128_lidc``, ``refine16_3clicks_ms_128_lidc``: 16 hypotheses steered by one
  inside click, and by three clicks (the evaluation's simulated clicks, which make the pool
  grow), on the bundled ``lidc`` model and a real 128x128 test slice (its encoding held, as
  in the review after a sample); ``refine16_encode_ms_128_lidc`` adds the encoding (a new
  region). :func:`bench_refine`.
- ``ged_s_1000x100x4_128``: GED for 1000 images x 100 samples x 4 graders at 128x128.
- ``train_images_per_s_128_b8`` (and ``..._fp32``, ``..._bf16``): training throughput at batch
  8, 128x128, with the training path users run; the headline figure is the configuration
  ``probunet train`` uses by default (bf16 autocast + channels_last).

The command line, ``probunet bench`` (its table and targets), is :mod:`napari_probunet.cli.bench`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import numpy as np

from napari_probunet.model.config import ModelConfig
from napari_probunet.training.precision import amp_context


def _median_ms(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def _rss_child(device: str) -> float:
    code = (
        "import resource, numpy as np, torch\n"
        "from napari_probunet.model.network import ProbUNet\n"
        "from napari_probunet.session import Session\n"
        "torch.manual_seed(0)\n"
        f"s = Session(ProbUNet(), device={device!r})\n"
        "s.set_image(np.random.default_rng(0).random((512, 512), dtype=np.float32))\n"
        "s.sample(100, seed=0)\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_session(device: str = "cpu", repeats: int = 5) -> dict[str, float]:
    """The session figures (encode, sample, decode, unsplit ratio, peak memory) on ``device``."""
    import torch

    from napari_probunet.model.network import ProbUNet
    from napari_probunet.session import Session

    torch.manual_seed(0)
    session = Session(ProbUNet(), device=device)
    rng = np.random.default_rng(0)
    img128 = rng.random((128, 128), dtype=np.float32)
    img256 = rng.random((256, 256), dtype=np.float32)
    sync = torch.cuda.synchronize if session.device.type == "cuda" else (lambda: None)

    def timed(fn):
        def run():
            fn()
            sync()
        return run

    out: dict[str, float] = {}
    out["encode_ms_128"] = _median_ms(timed(lambda: session.set_image(img128)), repeats)
    out["sample16_ms_128"] = _median_ms(timed(lambda: session.sample(16, seed=1)), repeats)
    split = _median_ms(timed(lambda: session.sample(100, seed=1)), repeats)
    out["sample100_ms_128"] = split
    z = session.sample(100, seed=1).z
    unsplit = _median_ms(timed(lambda: session.decode_unsplit(z)), max(1, repeats // 2))
    out["unsplit_over_split_100"] = unsplit / split
    session.set_image(img256)
    z0 = session.prior()[0]
    out["decode_ms_256"] = _median_ms(timed(lambda: session.decode(z0)), 4 * repeats, warmup=3)
    out["peak_rss_mb_sample100_512"] = _rss_child(str(session.device))
    out["device"] = str(session.device)
    return out


def bench_refine(device: str = "cpu", repeats: int = 5) -> dict[str, float]:
    """Refining by clicks (:mod:`napari_probunet.review.refine`) on the bundled ``lidc`` model
    and the first real CT sample (``samples/lidc_test_slices.npz``), radiologist 1's mask."""
    from pathlib import Path

    from napari_probunet.model.modelfile import load_model
    from napari_probunet.review.refine import refine
    from napari_probunet.session import Session
    from napari_probunet.training.evaluate_clicks import first_click, next_click

    data = np.load(Path(__file__).resolve().parents[1] / "samples" / "lidc_test_slices.npz")
    image, mask = data["images"][0], data["masks"][0, 0]
    session = Session(load_model("lidc", device="cpu"), device=device)
    session.set_image(image)
    clicks = [first_click(mask)]
    while len(clicks) < 3:  # the evaluation's clicks: the nearest hypothesis's largest error
        labels = refine(session, clicks, 16, seed=0).hypotheses.labels
        inter = (labels & mask[None]).reshape(16, -1).sum(1)
        union = (labels | mask[None]).reshape(16, -1).sum(1)
        clicks.append(next_click(mask, labels[int(np.argmax(inter / np.maximum(union, 1)))])
                      or clicks[-1])
    out = {"refine16_ms_128_lidc": _median_ms(lambda: refine(session, clicks[:1], 16), repeats),
           "refine16_3clicks_ms_128_lidc": _median_ms(lambda: refine(session, clicks, 16),
                                                      repeats)}

    def encode_and_refine():
        session.set_image(image)
        refine(session, clicks[:1], 16)

    out["refine16_encode_ms_128_lidc"] = _median_ms(encode_and_refine, repeats)
    return out


def _train_step_ms(device: str, amp: str, channels_last: bool, steps: int) -> float:
    """Median milliseconds of one training step: batch 8, 128x128, default config."""
    import torch

    from napari_probunet.model.losses import elbo_loss
    from napari_probunet.model.network import ProbUNet

    torch.manual_seed(0)
    dev = torch.device(device)
    model = ProbUNet(ModelConfig()).to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    x = torch.randn(8, 1, 128, 128, device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (8, 128, 128), device=dev)

    def step():
        ctx, _ = amp_context(amp, dev.type)
        with ctx:
            out = model(x, y)
        loss = elbo_loss(out, y)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 100.0)
        opt.step()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    return _median_ms(step, steps, warmup=1)


def bench_training(device: str = "cpu", steps: int = 3) -> dict[str, float]:
    """Images per second of the training step in fp32 and in bf16 autocast + channels_last."""
    fp32 = _train_step_ms(device, "none", False, steps)
    bf16 = _train_step_ms(device, "bf16" if not device.startswith("mps") else "none", True, steps)
    return {"train_images_per_s_128_b8_fp32": 8000 / fp32,
            "train_images_per_s_128_b8_bf16": 8000 / bf16,
            "train_images_per_s_128_b8": 8000 / bf16}
