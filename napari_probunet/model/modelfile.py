"""Model files: safetensors weights with the JSON configuration in the same file's header.

A model file is a standard ``.safetensors`` file. Its header metadata holds one key,
``"probunet"``, a JSON document::

    {"format_version": 1, "config": {...ModelConfig...}, "provenance": {...}}

``provenance`` records how the weights were made (recipe, data, steps, metrics, versions).
Nothing in a model file is ever executed: safetensors stores raw tensors and a JSON header,
and files that look like pickles (PyTorch ``.pt``/``.pth`` checkpoints) are refused before
anything is parsed. ``probunet info FILE`` (:mod:`napari_probunet.cli.info`) shows what a
file contains (:func:`describe_model`).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_probunet import files, limits
from napari_probunet.device import resolve_device
from napari_probunet.errors import ModelFileError
from napari_probunet.model.config import ModelConfig

FORMAT_VERSION = 1
METADATA_KEY = "probunet"
#: the bundled model files ship in ``napari_probunet/models`` (package data)
MODELS_DIR = Path(__file__).parent.parent / "models"


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
DEFAULT_MODEL_NAME = "lidc"


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


def _open_failed(path: Path, exc: OSError) -> ModelFileError:
    return ModelFileError(
        f"cannot read the model file {path} ({exc.strerror or exc}); check that it exists and "
        "that you may read it"
    )


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


#: bytes per element of the safetensors dtypes
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2,
                "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def _check_tensor_entries(path: Path, header: Any) -> int:
    """Validate the safetensors header's structure and every tensor's declared size (its
    shape and dtype must fill its byte range exactly); return where the tensor data ends."""
    if not isinstance(header, dict):
        raise ModelFileError(
            f"{path.name} is not a safetensors file: its header is a JSON "
            f"{type(header).__name__}, not an object"
        )
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            if not isinstance(entry, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in entry.items()):
                raise ModelFileError(
                    f"{path.name} is damaged: its __metadata__ must be an object of strings"
                )
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
                and isinstance(shape, list) and all(_is_count(s) for s in shape)
                and isinstance(offsets, list) and len(offsets) == 2
                and all(_is_count(o) for o in offsets) and offsets[0] <= offsets[1]):
            raise ModelFileError(
                f"{path.name} is damaged: the header's entry for tensor {str(key)[:80]!r} is not "
                "{dtype: string, shape: [sizes], data_offsets: [begin, end]}"
            )
        size = _DTYPE_BYTES.get(entry["dtype"])
        if size is None or limits.array_bytes(shape, size) != offsets[1] - offsets[0]:
            raise ModelFileError(
                f"{path.name} is damaged: tensor {str(key)[:80]!r} is declared as "
                f"{entry['dtype']} {tuple(shape)} but holds {offsets[1] - offsets[0]} bytes"
            )
        end = max(end, offsets[1])
    return end


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate the file's framing and header without executing anything.

    Returns ``(header, meta)``: the safetensors header (tensor name -> dtype, shape, offsets)
    and the parsed ``probunet`` description. Everything wrong is a :class:`ModelFileError`.
    """
    raw, n, size = _read_framed_header(path)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path.name} is not a safetensors file: its header is not JSON") \
            from exc
    end = _check_tensor_entries(path, header)
    if 8 + n + end > size:
        raise ModelFileError(
            f"{path.name} is truncated: the header promises {8 + n + end} bytes, the file has "
            f"{size}; copy the model file again"
        )
    return header, _description(path, header)


def _read_framed_header(path: Path) -> tuple[bytes, int, int]:
    """``(header bytes, header length, file size)``: the safetensors framing checked (and a
    pickle refused) before the header, at most ``MAX_HEADER_BYTES``, is read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            # a safetensors file starts with its header's length (8 bytes, little-endian) and
            # the header's "{"; that length may well begin with byte 0x80 or "PK", so a file
            # framed like safetensors is never taken for a pickle (about 1 model file in 256 was)
            n = struct.unpack("<Q", head[:8])[0] if len(head) >= 8 else None
            framed = n is not None and n <= size - 8 and head[8:] == b"{"
            # pickle protocol 2-5 ("\x80" + protocol) or torch.save's zip container
            pickled = head[:4] == b"PK\x03\x04" or (len(head) >= 2 and head[0] == 0x80
                                                     and 2 <= head[1] <= 5)
            if pickled and not framed:
                raise ModelFileError(
                    f"{path.name} looks like a pickled PyTorch checkpoint (.pt/.pth). "
                    "napari-probunet never unpickles files, since unpickling can run arbitrary "
                    "code; load it yourself in trusted code and save it with "
                    "napari_probunet.model.modelfile.save_model"
                )
            if n is None:
                raise ModelFileError(
                    f"{path.name} is empty or truncated ({size} bytes); it is not a model file")
            if n > size - 8:
                raise ModelFileError(
                    f"{path.name} is truncated or not a safetensors file (header of {n} bytes "
                    f"in a {size}-byte file); copy the model file again"
                )
            limits.check("MAX_HEADER_BYTES", n, f"{path.name}: the model header ({n} bytes)",
                         ModelFileError)
            f.seek(8)
            raw = f.read(n)
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a folder; pass the .safetensors model file inside it") \
            from None
    except OSError as exc:
        raise _open_failed(path, exc) from None
    return raw, n, size


def _description(path: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The ``probunet`` description in the header's metadata, parsed and checked (an object
    with a ``format_version`` this version reads; ``config``, ``provenance`` objects)."""
    meta = header.get("__metadata__", {}).get(METADATA_KEY)
    if meta is None:
        raise ModelFileError(
            f"{path.name} is a safetensors file but not a napari-probunet model (no "
            f"'{METADATA_KEY}' metadata); save models with "
            "napari_probunet.model.modelfile.save_model"
        )
    try:
        meta = json.loads(meta)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path.name}: its model description is not valid JSON") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(
            f"{path.name}: its model description is a JSON {type(meta).__name__}, not an object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ModelFileError(f"{path.name}: the model description has no format_version")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path.name} uses model file format {version}, newer than this napari-probunet "
            f"understands ({FORMAT_VERSION}); upgrade napari-probunet"
        )
    for key in ("config", "provenance"):
        if key in meta and not isinstance(meta[key], dict):
            raise ModelFileError(
                f"{path.name}: the model description's {key!r} is a JSON "
                f"{type(meta[key]).__name__}, not an object; the file is damaged"
            )
    return meta


def _check_header(path: Path) -> dict[str, Any]:
    """Validate the file's framing without executing anything; return the parsed metadata."""
    return _read_header(path)[1]


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


_WIDTHS = ("in_channels", "num_classes", "latent_dim", "fcomb_channels")
_DEPTHS = ("convs_per_block", "fcomb_layers")


def _check_config(name: str, cfg: Any):
    """The :class:`ModelConfig` of a model description, its sizes checked against the limits
    (:mod:`napari_probunet.limits`) before anything is allocated."""
    if not isinstance(cfg, dict):
        raise ModelFileError(f"{name}: the model description has no configuration object")

    def bad(key: str, value: Any, expected: str) -> ModelFileError:
        return ModelFileError(f"{name}: invalid model configuration: {key} must be {expected}, "
                              f"not {str(value)[:80]!r}")

    for key in (*_WIDTHS, *_DEPTHS, "input_size"):
        value = cfg.get(key, 1)
        if not _is_count(value) or value < 1:
            raise bad(key, value, "a positive integer")
    channels = cfg.get("channels", [1])
    if not isinstance(channels, list) or not channels or not all(
            _is_count(c) and c >= 1 for c in channels):
        raise bad("channels", channels, "a list of positive integers")
    for key, value in [*((k, cfg.get(k, 1)) for k in _WIDTHS),
                       *((f"channels[{i}]", c) for i, c in enumerate(channels))]:
        limits.check("MAX_MODEL_CHANNELS", value, f"{name}: the model's {key} ({value})",
                     ModelFileError)
    layers = 4 * len(channels) * cfg.get("convs_per_block", 3) + cfg.get("fcomb_layers", 3) + 1
    limits.check("MAX_MODEL_LAYERS", layers,
                 f"{name}: the model configuration ({layers} convolution layers)", ModelFileError)
    side = cfg.get("input_size", 128)
    limits.check_plane(side, side, f"{name}: the model's input_size", ModelFileError)
    names = cfg.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise bad("class_names", names, "a list of strings")
    for key in ("preprocessing", "domain"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise bad(key, cfg[key], "an object")
    bounds = cfg.get("logsigma_bounds", [0, 1])
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds):
        raise bad("logsigma_bounds", bounds, "two numbers")
    # every file written before these settings existed was trained with these values
    cfg = {"weight_init": "torch", "prior_anchor_scope": "image", **cfg}
    try:
        return ModelConfig.from_dict(cfg)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ModelFileError(f"{name}: invalid model configuration: {exc}") from exc


def _expected_shapes(name: str, config) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model ``config`` describes, counted on PyTorch's ``meta``
    device (nothing allocated) and checked against ``MAX_MODEL_PARAMETERS``."""
    import math

    import torch

    from napari_probunet.model.network import build_model

    try:
        with torch.device("meta"):
            skeleton = build_model(config)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{name}: invalid model configuration: {exc}") from exc
    shapes = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    count = sum(math.prod(s) for s in shapes.values())
    limits.check("MAX_MODEL_PARAMETERS", count, f"{name}: the model configuration ({count:,} "
                 "weights)", ModelFileError)
    return shapes


def load_model(path: str | os.PathLike = "default", device: str = "cpu"):
    """Load a model file or a bundled model by name (``"default"``, ``"lidc"``, ``"lesions"``)
    as an eval-mode :class:`ProbUNet`.

    The header, the configuration's sizes (:mod:`napari_probunet.limits`) and every tensor's
    shape are checked before any weight is read or any layer is allocated.
    """
    import torch
    from safetensors.torch import load_file

    from napari_probunet.model.network import build_model

    p = resolve_model_path(path)
    header, meta = _read_header(p)
    config = _check_config(p.name, meta.get("config"))
    expected = _expected_shapes(p.name, config)
    found = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{k}: file {found[k]} vs config {v}" for k, v in expected.items()
             if k in found and found[k] != v]
    if missing or unexpected or wrong:
        detail = "; ".join(
            s for s in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"wrong shapes {wrong[:3]}" if wrong else "",
            ) if s
        )
        raise ModelFileError(f"{p.name}: weights do not match its configuration ({detail})")
    try:
        tensors = load_file(str(p), device="cpu")
    except OSError as exc:
        raise _open_failed(p, exc) from None
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{p.name} cannot be read as safetensors: {exc}") from exc
    _check_weights(p.name, tensors)
    model = build_model(config)
    state = model.state_dict()
    with torch.no_grad():
        model.load_state_dict({k: v.to(state[k].dtype) for k, v in tensors.items()})
    model.eval()
    model.to(resolve_device(device))
    model.source_path = str(p)
    try:
        model.source_sha256 = file_sha256(p)
    except OSError as exc:
        raise _open_failed(p, exc) from None
    model.metadata = meta
    return model


def save_model(model, path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> str:
    """Write ``model`` (weights in float32) atomically; return the file's sha256.

    The file is written to a hidden temporary file beside ``path`` (named after this process),
    flushed to disk and renamed over ``path``: a crash leaves the old file or the new one.
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "provenance": provenance or {},
    }
    tensors = {k: v.detach().float().cpu().contiguous() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary file is named after this process, and those of killed saves are removed
    files.remove_dead_temporaries(path.parent, files.temporaries_of(path.name))
    fd, tmp = files.create_temporary(path)  # a new file's ordinary mode, not a private one
    os.close(fd)
    try:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(meta)})
        files.give_ordinary_mode(tmp)  # save_file replaces the file with a private (0600) one
        files.commit_replace(tmp, path)  # fsync, rename, fsync the folder: old or new, never a mix
    finally:
        if tmp.exists():
            tmp.unlink()
    return file_sha256(path)


# -- what `probunet info` shows ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelDescription:
    """What a model file holds, checked as loading checks it (``probunet info`` prints it)."""

    path: Path
    sha256: str
    bytes: int
    #: the file's description: ``format_version``, ``config``, ``provenance``
    metadata: dict[str, Any]
    #: ``"finite"``, or ``"BROKEN: <why>"`` (NaN, infinite or absurd weights, unreadable tensors)
    weights: str

    def to_dict(self) -> dict[str, Any]:
        """``file``, ``sha256``, ``bytes``, the description's keys, ``weights`` (the JSON of
        ``probunet info --json``)."""
        info = {"file": str(self.path), "sha256": self.sha256, "bytes": self.bytes,
                **self.metadata}
        info["weights"] = self.weights
        return info


def describe_model(path: str | os.PathLike) -> ModelDescription:
    """Describe a model file or a bundled model (by name) without building the network.

    The header is validated as :func:`load_model` validates it (a
    :class:`~napari_probunet.errors.ModelFileError` if it is not a model file); broken
    weights do not raise but are named in :attr:`ModelDescription.weights`.
    """
    p = resolve_model_path(path)
    meta = _check_header(p)
    sha, size = file_sha256(p), p.stat().st_size
    try:  # the same check as loading: a file with NaN weights is named as broken here too
        from safetensors.torch import load_file

        _check_weights(p.name, load_file(str(p), device="cpu"))
        weights = "finite"
    except ModelFileError as exc:
        weights = f"BROKEN: {exc}"
    except Exception as exc:  # safetensors' own errors: unreadable tensors
        weights = f"BROKEN: cannot be read ({exc})"
    return ModelDescription(path=p, sha256=sha, bytes=size, metadata=meta, weights=weights)
