"""Model files: safetensors weights with the JSON configuration in the same file's header.

A model file is a standard ``.safetensors`` file. Its header metadata holds one key,
``"probunet"``, a JSON document::

    {"format_version": 1, "config": {...ModelConfig...}, "provenance": {...}}

``provenance`` records how the weights were made (recipe, data, steps, metrics, versions).
Nothing in a model file is ever executed: safetensors stores raw tensors and a JSON header,
and files that look like pickles (PyTorch ``.pt``/``.pth`` checkpoints) are refused before
anything is parsed. ``probunet info FILE`` shows what a file contains.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_probunet.errors import ModelFileError

FORMAT_VERSION = 1
METADATA_KEY = "probunet"
MODELS_DIR = Path(__file__).parent / "models"


@dataclass(frozen=True)
class BundledModel:
    """A model file that ships with the package, addressed by ``name`` everywhere (command line
    ``--model NAME``, :func:`load_model`, the widget's model choice, which shows ``title``)."""

    name: str
    file: str
    title: str

    @property
    def path(self) -> Path:
        return MODELS_DIR / self.file


#: the bundled models, in the order the widget lists them
BUNDLED_MODELS: tuple[BundledModel, ...] = (
    BundledModel("lidc", "lidc.safetensors", "Lung nodule, CT (LIDC-IDRI, 4 radiologists)"),
    BundledModel("lesions", "lesions.safetensors", "Synthetic demo lesion"),
)
#: what ``"default"`` means: the real-data model (docs/model-card-lidc.md)
DEFAULT_MODEL_NAME = "lesions"


def bundled_model(name: str) -> BundledModel | None:
    """The bundled model called ``name`` (``"default"`` included), or ``None``."""
    if name == "default":
        name = DEFAULT_MODEL_NAME
    return next((m for m in BUNDLED_MODELS if m.name == name), None)


def bundled_model_of(path: str | os.PathLike | None) -> BundledModel | None:
    """The bundled model whose file ``path`` is, or ``None`` (any other file)."""
    if path is None:
        return None
    try:
        resolved = Path(path).resolve()
    except OSError:
        return None
    return next((m for m in BUNDLED_MODELS if m.path.resolve() == resolved), None)


DEFAULT_MODEL = bundled_model("default").path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, for provenance records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_model_path(path: str | os.PathLike) -> Path:
    """A bundled model's name (``"lidc"``, ``"lesions"``, or ``"default"``, which is
    :data:`DEFAULT_MODEL_NAME`) or a path that must exist. A file named like a bundled model is
    reached with a path such as ``./lidc``."""
    bundled = bundled_model(str(path)) if isinstance(path, str) else None
    if bundled is not None:
        if not bundled.path.exists():
            raise ModelFileError(
                f"the bundled model {bundled.name!r} is missing ({bundled.path}); reinstall "
                "napari-probunet or pass a model file"
            )
        return bundled.path
    p = Path(path).expanduser()
    if not p.exists():
        names = ", ".join(["default", *(m.name for m in BUNDLED_MODELS)])
        raise ModelFileError(f"model file not found: {p} (bundled models: {names})")
    if p.is_dir():
        raise ModelFileError(f"{p} is a folder; pass the .safetensors model file inside it")
    return p


def _check_header(path: Path) -> dict[str, Any]:
    """Validate the file's framing without executing anything; return the parsed metadata."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
        # a safetensors file starts with its header's length (8 bytes, little-endian) and the
        # header's "{"; that length may well begin with byte 0x80 or "PK", so a file framed
        # like safetensors is never taken for a pickle (about 1 model file in 256 was)
        n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
        framed = n is not None and n <= size - 8 and head[8:] == b"{"
        # pickle protocol 2-5 ("\x80" + protocol) or torch.save's zip container
        pickled = head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5)
        if pickled and not framed:
            raise ModelFileError(
                f"{path.name} looks like a pickled PyTorch checkpoint (.pt/.pth). napari-probunet "
                "never unpickles files, since unpickling can run arbitrary code; load it yourself "
                "in trusted code and save it with napari_probunet.modelfile.save_model"
            )
        if n is None:
            raise ModelFileError(f"{path.name} is empty or truncated ({size} bytes); it is not a model file")
        f.seek(8)
        if n > size - 8 or n > 100_000_000:
            raise ModelFileError(
                f"{path.name} is truncated or not a safetensors file (header of {n} bytes in a "
                f"{size}-byte file); copy the model file again"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFileError(f"{path.name} is not a safetensors file: its header is not JSON") from exc
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise ModelFileError(
            f"{path.name} is truncated: the header promises {8 + n + end} bytes, the file has {size}; "
            "copy the model file again"
        )
    meta = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if meta is None:
        raise ModelFileError(
            f"{path.name} is a safetensors file but not a napari-probunet model (no '{METADATA_KEY}' "
            "metadata); save models with napari_probunet.modelfile.save_model"
        )
    try:
        meta = json.loads(meta)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path.name}: its model description is not valid JSON") from exc
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFileError(f"{path.name}: the model description has no format_version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} uses model file format {version}, newer than this napari-probunet "
            f"understands ({FORMAT_VERSION}); upgrade napari-probunet"
        )
    return meta


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON description (format version, config, provenance) of a model file."""
    return _check_header(resolve_model_path(path))


#: no trained network has a weight this large; a file that does was damaged or scaled by mistake
MAX_ABS_WEIGHT = 1e12


def _check_weights(name: str, tensors: dict[str, Any]) -> None:
    """Refuse NaN, infinite or absurdly large weights, naming the first such tensor.

    Such a model still runs, but every hypothesis comes out background with no uncertainty,
    which reads as "no lesion, all hypotheses agree".
    """
    import torch

    for key, t in tensors.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ModelFileError(
                f"{name}: tensor {key!r} holds {bad} of {t.numel()} values that are NaN or "
                "infinite, so the model would answer nonsense; the training diverged or the "
                "file is damaged: use an earlier checkpoint, retrain, or copy the file again"
            )
        largest = float(t.abs().max())
        if largest > MAX_ABS_WEIGHT:
            raise ModelFileError(
                f"{name}: tensor {key!r} holds a weight of magnitude {largest:.3g} (more than "
                f"{MAX_ABS_WEIGHT:.0e}; no trained model has such weights), so the model would "
                "answer nonsense; the file is damaged or was scaled by mistake: use an earlier "
                "checkpoint, retrain, or copy the file again"
            )


def load_model(path: str | os.PathLike = "default", device: str = "cpu"):
    """Load a model file or a bundled model by name (``"default"``, ``"lidc"``, ``"lesions"``)
    as an eval-mode :class:`ProbUNet`."""
    import torch
    from safetensors.torch import load_file

    from napari_probunet.config import ModelConfig
    from napari_probunet.device import resolve_device
    from napari_probunet.model import ProbUNet

    p = resolve_model_path(path)
    meta = _check_header(p)
    try:
        config = ModelConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{p.name}: invalid model configuration: {exc}") from exc
    try:
        tensors = load_file(str(p), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{p.name} cannot be read as safetensors: {exc}") from exc
    model = ProbUNet(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{k}: file {tuple(tensors[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"wrong shapes {wrong[:3]}" if wrong else "",
            ) if s
        )
        raise ModelFileError(f"{p.name}: weights do not match its configuration ({detail})")
    _check_weights(p.name, tensors)
    with torch.no_grad():
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.eval()
    model.to(resolve_device(device))
    model.source_path = str(p)
    model.source_sha256 = file_sha256(p)
    model.metadata = meta
    return model


def save_model(model, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> str:
    """Write ``model`` (weights in float32) atomically; return the file's sha256."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "provenance": provenance or {},
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
        with open(tmp, "rb+") as fh:  # on disk before the rename: a crash leaves old or new
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, not the private temp file's mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return file_sha256(path)


# -- `probunet info` ---------------------------------------------------------------------------

def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default="default",
                        help="model file, or a bundled model: lidc, lesions, default (= "
                        f"{DEFAULT_MODEL_NAME})")
    parser.add_argument("--json", action="store_true", help="print the description as JSON")


def run(args: argparse.Namespace) -> int:
    p = resolve_model_path(args.model)
    meta = _check_header(p)
    info = {"file": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size, **meta}
    try:  # the same check as loading: a file with NaN weights is named as broken here too
        from safetensors.torch import load_file

        _check_weights(p.name, load_file(str(p), device="cpu"))
        info["weights"] = "finite"
    except ModelFileError as exc:
        info["weights"] = f"BROKEN: {exc}"
    except Exception as exc:  # safetensors' own errors: unreadable tensors
        info["weights"] = f"BROKEN: cannot be read ({exc})"
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    cfg = meta.get("config", {})
    bundled = bundled_model_of(p)
    if bundled is not None:
        print(f"bundled      {bundled.name}: {bundled.title}")
    print(f"model file   {p}")
    print(f"sha256       {info['sha256']}")
    print(f"size         {info['bytes'] / 1e6:.2f} MB, format {meta['format_version']}")
    print(f"weights      {info['weights']}")
    for key in ("class_names", "channels", "latent_dim", "input_size", "beta", "preprocessing"):
        print(f"{key:<12} {cfg.get(key)}")
    if cfg.get("deterministic"):
        print("kind         deterministic U-Net (baseline): every sample is the same map")
    domain = cfg.get("domain") or {}
    for key in ("modality", "description", "intensity", "training_data"):
        if domain.get(key):
            print(f"{key:<12} {domain[key]}")
    if domain.get("reference"):
        print(f"domain check {len(domain['reference'])} reference images, threshold "
              f"{domain.get('threshold', 0):.2f} (napari_probunet.domain)")
    for key, value in (meta.get("provenance") or {}).items():
        print(f"{key:<12} {json.dumps(value) if isinstance(value, (dict, list)) else value}")
    return 0
