"""``probunet domain``: measure what a model's training images look like and record it.

The measuring is :func:`napari_probunet.review.domain.fit_model_domain`; this module reads the
arguments, writes the model file with its domain, and prints the one-line result.
"""

from __future__ import annotations

import argparse

from napari_probunet.data.readers import open_cases
from napari_probunet.model.modelfile import load_model, save_model
from napari_probunet.review.domain import Domain, fit_model_domain


def configure(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``probunet domain``."""
    parser.add_argument("model", help="model file to read (or a bundled model's name)")
    parser.add_argument("--data", required=True,
                        help="the model's training data (folder, zip, pickle or synthetic spec, "
                        "with its #part=train split)")
    parser.add_argument("--out", required=True, help="model file to write (may be the same file)")
    parser.add_argument("--modality", help="e.g. CT, synthetic")
    parser.add_argument("--description", help="one line shown next to the model's name")
    parser.add_argument("--intensity", help="the intensity convention of the inputs, in words")
    parser.add_argument("--max-images", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    """``probunet domain``: measure a model's domain on its training data and record it."""
    model = load_model(args.model)
    domain = dict(model.config.domain or {})
    for key in ("modality", "description", "intensity"):
        if getattr(args, key):
            domain[key] = getattr(args, key)
    model.config.domain = domain
    model.config.domain = fit_model_domain(model.config, open_cases(args.data),
                                           max_images=args.max_images, training_data=args.data)
    provenance = dict((model.metadata or {}).get("provenance") or {})
    save_model(model, args.out, provenance)
    d = Domain.from_dict(model.config.domain)
    print(f"{args.out}: domain of {d.statistics['images_measured']} training images recorded "
          f"(threshold {d.threshold:.2f}); {d.summary()}")
    return 0
