"""Load a user's pickle without running its code.

``pickle.load`` calls whatever callable a file names (``os.system``, ``builtins.eval``, any
importable class), so a pickle from the internet is a program. The LIDC pickle of Stefan
Knegt's PyTorch port is nevertheless the format many people have; this module reads it with a
restricted unpickler that resolves only the globals plain data needs:

- the builtin containers and scalars (``dict``, ``list``, ``tuple``, ``set``, ``frozenset``,
  ``str``, ``bytes``, ``bytearray``, ``int``, ``float``, ``complex``, ``bool``) and
  ``_codecs.encode`` (protocol-2 pickles spell ``bytes`` with it);
- numpy arrays, dtypes and scalars: ``numpy.ndarray``, ``numpy.dtype`` and numpy's
  reconstruction functions ``multiarray._reconstruct``, ``multiarray.scalar`` and
  ``numeric._frombuffer``, under both ``numpy.core`` (numpy 1) and ``numpy._core`` (numpy 2).

Anything else raises :class:`DataError` naming the refused global, before it is ever called.

No global is handed to the unpickler as it is: it gets a sealed stand-in that calls it. The
BUILD opcode sets attributes on whatever object is on the stack, a class or function included
(``setattr(cls, "__init__", int)`` through "slot state"), and such a change would outlast the
load and break every later one; a stand-in refuses BUILD and any attribute change, and so do
the objects the numpy stand-ins make (their state is recorded as data, never set).

Even the numpy globals are not handed to numpy as they are: ``numpy.ndarray(shape, 'O',
buffer)`` turns bytes into object pointers and crashes the interpreter. The numpy names
resolve to stand-ins that only record their arguments; once the stream is read, arrays are
rebuilt with ``np.frombuffer`` from validated plain dtypes (bool, integer, float, complex,
bytes and unicode strings; object arrays are rebuilt element by element from their already
safe contents). Structured, datetime and other dtypes are refused.

Nor can a small pickle make something huge. The builtins may only be called the way plain
data calls them (``bytes(b"...")``, ``set([...])``, ``complex(1, 2)``; never ``bytes(2**31)``
or ``str(a_list)``), ``_codecs.encode`` only turns a string into bytes of one of the text
encodings, reads never ask for more than the file still holds, and the arrays rebuilt from one
pickle may not take more than its own size plus the limit ``MAX_DECODED_BYTES``
(:mod:`napari_probunet.limits`): a buffer used by many arrays counts once per array.
"""

from __future__ import annotations

import builtins
import codecs
import io
import math
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

from napari_probunet import limits
from napari_probunet.errors import DataError, LimitError

_BUILTINS = (
    "dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray",
    "int", "float", "complex", "bool",
)  # fmt: skip
_PLAIN_KINDS = "biufcUS"


class _Refused(DataError):
    """Raised inside the unpickler; carries the message to the caller unchanged."""


# ----------------------------------------------------------------------------- stand-ins


class _Global:
    """What :meth:`RestrictedUnpickler.find_class` returns for an allowed global.

    Calling it calls ``make``. It has no ``__dict__`` and refuses BUILD (``__setstate__``)
    and attribute changes, so a pickle cannot change it (or anything behind it) for the
    loads that follow. ``value`` is what the global stands for where a pickle stores it as
    a value rather than calling it (a builtin type), or None where that is refused (numpy).
    """

    __slots__ = ("name", "make", "value")

    def __init__(self, name: str, make: Any, value: Any = None) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "make", make)
        object.__setattr__(self, "value", value)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.make(*args, **kwargs)

    def __setstate__(self, state: Any) -> None:
        raise _Refused(
            f"the pickle tries to change {self.name} itself (BUILD on a global), which plain "
            "data never does"
        )

    def __setattr__(self, name: str, value: Any) -> None:
        raise _Refused(f"the pickle tries to set {name!r} on {self.name}")

    def __delattr__(self, name: str) -> None:
        raise _Refused(f"the pickle tries to delete {name!r} from {self.name}")

    def __repr__(self) -> str:
        return f"<stand-in for {self.name}>"


class _NoState:
    """Base of the stand-ins numpy never applies state to: BUILD on them is refused."""

    def __setstate__(self, state: Any) -> None:
        raise _Refused(
            f"the pickle applies state (BUILD) to {self.what}, which plain numpy data never does"
        )


def _ndarray_called(*args: Any, **kwargs: Any) -> None:
    raise _Refused("the pickle calls numpy.ndarray(...) directly, which plain arrays never do")


_NDARRAY = _Global("numpy.ndarray", _ndarray_called)  # only the subtype argument of _reconstruct


class _DtypeStub:
    """Stands for ``numpy.dtype(obj, align, copy)`` followed by ``__setstate__(state)``."""

    def __init__(self, obj: Any = None, align: Any = False, copy: Any = False) -> None:
        self.obj, self.state = obj, None

    def __setstate__(self, state: Any) -> None:
        self.state = state  # recorded as data; checked by _dtype()


class _ArrayStub:
    """Stands for ``_reconstruct(ndarray, ...)`` followed by ``__setstate__(state)``."""

    def __init__(self) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state  # recorded as data; checked by _Rebuilder._array()


class _BufferArrayStub(_NoState):
    """Stands for ``_frombuffer(buffer, dtype, shape, order)`` (protocol 5)."""

    what = "an array made from a buffer"

    def __init__(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> None:
        self.buffer, self.dtype, self.shape, self.order = buffer, dtype, shape, order


class _ScalarStub(_NoState):
    """Stands for ``scalar(dtype, data)`` (a numpy scalar)."""

    what = "a numpy scalar"

    def __init__(self, dtype: Any, data: Any = None) -> None:
        self.dtype, self.data = dtype, data


def _reconstruct(subtype: Any, shape: Any = None, typecode: Any = None) -> _ArrayStub:
    if subtype is not _NDARRAY:
        raise _Refused("the pickle reconstructs an array of a type other than numpy.ndarray")
    return _ArrayStub()


# -- the builtins, called only the way plain data calls them

_SCALARS = (str, bytes, bytearray, int, float, complex, bool, type(None))
_CONTAINERS = (list, tuple, set, frozenset, dict)
_TEXT_ENCODINGS = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1", "utf-8", "utf8",
                   "utf_8", "ascii"}


def _is_text_encoding(value: Any) -> bool:
    return isinstance(value, str) and value.lower() in _TEXT_ENCODINGS


def _checked(name: str, make: Any, allowed) -> Any:
    """``make`` called only when ``allowed(args)`` says the arguments are plain data's."""

    def call(*args: Any, **kwargs: Any) -> Any:
        if kwargs or not allowed(args):
            kinds = ", ".join(type(a).__name__ for a in args)
            raise _Refused(f"the pickle calls {name}({kinds}), which plain data never does")
        return make(*args)

    return call


def _bytes_args(args: tuple) -> bool:
    """``bytes()``, ``bytes(b"..")``, ``bytes("..", "latin-1")``, ``bytes([1, 2])``; never
    ``bytes(n)`` (n zero bytes: a tiny pickle asking for gigabytes)."""
    if not args:
        return True
    if len(args) == 1:
        return isinstance(args[0], (bytes, bytearray, list, tuple))
    return (len(args) <= 3 and isinstance(args[0], str) and _is_text_encoding(args[1])
            and all(isinstance(a, str) for a in args[2:]))


def _str_args(args: tuple) -> bool:
    if not args:
        return True
    if len(args) == 1:
        return isinstance(args[0], (str, int, float, bool)) and not isinstance(args[0], complex)
    return (len(args) <= 3 and isinstance(args[0], (bytes, bytearray))
            and _is_text_encoding(args[1]) and all(isinstance(a, str) for a in args[2:]))


def _number_args(args: tuple) -> bool:
    return len(args) <= 2 and all(isinstance(a, (str, int, float, bool)) for a in args)


def _container_args(args: tuple) -> bool:
    return not args or (len(args) == 1 and isinstance(args[0], _CONTAINERS))


def _scalar_args(args: tuple) -> bool:
    return len(args) <= 1 and all(isinstance(a, _SCALARS) for a in args)


def _encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it: a string to bytes of a text encoding
    (never longer than the string's own UTF-8 in the pickle); other codecs are refused."""
    if not isinstance(obj, str) or not _is_text_encoding(encoding) or not isinstance(errors, str):
        raise _Refused(f"the pickle calls _codecs.encode with {type(obj).__name__} and "
                       f"{str(encoding)[:40]!r}; plain data only encodes text as latin-1/UTF-8")
    return codecs.encode(obj, encoding, errors)


_ARGUMENT_RULES = {
    "dict": _container_args, "list": _container_args, "tuple": _container_args,
    "set": _container_args, "frozenset": _container_args, "str": _str_args,
    "bytes": _bytes_args, "bytearray": _bytes_args, "int": _number_args, "float": _number_args,
    "complex": _number_args, "bool": _scalar_args,
}


def _builtin(qualified: str, name: str) -> _Global:
    kind = getattr(builtins, name)
    return _Global(qualified, _checked(qualified, kind, _ARGUMENT_RULES[name]), kind)


_TABLE: dict[tuple[str, str], _Global] = {
    ("builtins", n): _builtin(f"builtins.{n}", n) for n in _BUILTINS
}
_TABLE.update({
    # Python 2 spellings, seen in old pickles
    ("__builtin__", "set"): _builtin("__builtin__.set", "set"),
    ("__builtin__", "frozenset"): _builtin("__builtin__.frozenset", "frozenset"),
    ("_codecs", "encode"): _Global("_codecs.encode", _encode, None),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Global("numpy.dtype", _DtypeStub),
})
for _package in ("numpy.core", "numpy._core"):
    _TABLE[(f"{_package}.multiarray", "_reconstruct")] = _Global(
        f"{_package}.multiarray._reconstruct", _reconstruct)
    _TABLE[(f"{_package}.multiarray", "scalar")] = _Global(
        f"{_package}.multiarray.scalar", _ScalarStub)
    _TABLE[(f"{_package}.numeric", "_frombuffer")] = _Global(
        f"{_package}.numeric._frombuffer", _BufferArrayStub)


# ----------------------------------------------------------------------------- rebuilding


def _dtype(stub: Any) -> np.dtype:
    """A real, plain dtype from a :class:`_DtypeStub`; object dtype gives ``dtype('O')``."""
    if not isinstance(stub, _DtypeStub) or not isinstance(stub.obj, str):
        raise _Refused("the pickle gives an array a dtype that is not a plain numpy dtype")
    state = stub.state
    if state is not None and (
        not isinstance(state, tuple) or len(state) < 5 or any(s is not None for s in state[2:5])
    ):
        raise _Refused(f"the pickle uses a structured or sub-array dtype ({stub.obj!r})")
    try:
        dt = np.dtype(stub.obj)
    except TypeError:
        raise _Refused(f"the pickle uses an unknown dtype {stub.obj!r}") from None
    if dt.kind == "O":
        return dt
    if dt.kind not in _PLAIN_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise _Refused(f"the pickle uses dtype {dt} (only bool, numbers and strings are loaded)")
    if state is not None and state[1] in ("<", ">") and dt.itemsize > 1:
        dt = dt.newbyteorder(state[1])
    return dt


def _from_bytes(data: Any, dt: np.dtype, shape: tuple[int, ...], fortran: bool,
                budget: _Budget) -> np.ndarray:
    if isinstance(data, pickle.PickleBuffer):
        data = data.raw()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise _Refused("the pickle stores array data that is not raw bytes")
    count = math.prod(shape)
    if count * dt.itemsize != memoryview(data).nbytes:
        raise _Refused(
            f"the pickle's array data has {memoryview(data).nbytes} bytes, but shape {shape} of "
            f"{dt} needs {count * dt.itemsize} (truncated or corrupt)"
        )
    if dt.itemsize == 0:
        raise _Refused(f"the pickle uses the empty dtype {dt}")
    budget.take(count * dt.itemsize, f"an array of shape {shape} and dtype {dt}")
    flat = np.frombuffer(data, dtype=dt, count=count).copy()
    return flat.reshape(shape, order="F" if fortran else "C")


class _Budget:
    """The bytes the arrays of one pickle may still take (see the module docstring)."""

    def __init__(self, file_bytes: int) -> None:
        self.file_bytes, self.used = max(0, int(file_bytes)), 0

    def take(self, nbytes: int, what: str) -> None:
        limits.check_decoded(self.used + nbytes, self.file_bytes,
                             f"{what}, with the arrays before it,", _Refused)
        self.used += nbytes


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, int):
        value = (value,)
    if not isinstance(value, tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        raise _Refused(f"the pickle gives an array an invalid shape {value!r}")
    return value


class _Rebuilder:
    """Replaces the stand-ins in an unpickled object tree by real numpy objects."""

    def __init__(self, budget: _Budget | None = None) -> None:
        self._done: dict[int, Any] = {}
        self.budget = budget or _Budget(0)

    def __call__(self, obj: Any) -> Any:
        key = id(obj)
        if key in self._done:
            return self._done[key]
        if isinstance(obj, dict):
            out: Any = {}
            self._done[key] = out
            for k, v in obj.items():
                out[self(k)] = self(v)
        elif isinstance(obj, list):
            out = []
            self._done[key] = out
            out.extend(self(v) for v in obj)
        elif isinstance(obj, tuple):
            out = tuple(self(v) for v in obj)
        elif isinstance(obj, (set, frozenset)):
            out = type(obj)(self(v) for v in obj)
        elif isinstance(obj, _ArrayStub):
            out = self._array(obj)
        elif isinstance(obj, _BufferArrayStub):
            dt = _dtype(obj.dtype)
            if dt.kind == "O":
                raise _Refused("the pickle builds an object array from raw bytes")
            out = _from_bytes(obj.buffer, dt, _shape(obj.shape), obj.order == "F", self.budget)
        elif isinstance(obj, _ScalarStub):
            dt = _dtype(obj.dtype)
            if dt.kind == "O":
                raise _Refused("the pickle builds an object scalar")
            out = _from_bytes(obj.data, dt, (), False, self.budget)[()]
        elif isinstance(obj, (_DtypeStub,)):
            out = _dtype(obj)
        elif isinstance(obj, _Global):
            if obj.value is None:
                raise _Refused(f"the pickle refers to {obj.name} outside an array")
            out = obj.value  # a builtin type stored as a value
        else:
            out = obj  # str, bytes, numbers, None, bool: plain values
        self._done[key] = out
        return out

    def _array(self, stub: _ArrayStub) -> np.ndarray:
        state = stub.state
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("the pickle holds an array without valid state")
        _, shape, dtype_stub, fortran, data = state if len(state) == 5 else (1, *state)
        shape, dt = _shape(shape), _dtype(dtype_stub)
        if dt.kind != "O":
            return _from_bytes(data, dt, shape, bool(fortran), self.budget)
        if not isinstance(data, list) or len(data) != math.prod(shape):
            raise _Refused("the pickle holds an object array whose contents are not a list")
        self.budget.take(8 * len(data), f"an object array of shape {shape}")
        out = np.empty(len(data), dtype=object)
        for i, item in enumerate(data):
            out[i] = self(item)
        return out.reshape(shape, order="F" if fortran else "C")


# ----------------------------------------------------------------------------- unpickler


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only builds plain containers, scalars and numpy arrays.

    Use :func:`safe_load`, which also turns numpy stand-ins into arrays. ``source`` names the
    file in error messages.
    """

    def __init__(self, file: BinaryIO, source: str = "<pickle>") -> None:
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _TABLE[(module, name)]
        except (KeyError, TypeError):
            raise DataError(
                f"{self._source}: refused to load the pickle: it refers to {module}.{name}, "
                "which is not plain data (only builtin containers/scalars and numpy arrays are "
                "allowed, because unpickling anything else can run arbitrary code). If you "
                "trust this file, convert it to a folder of .npy files (see docs/data.md)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise _Refused("the pickle uses persistent ids, which plain data never needs")


def _remaining_bytes(file: BinaryIO) -> int | None:
    """How many bytes ``file`` still holds (a real file or an in-memory buffer), else None."""
    try:
        return max(0, os.fstat(file.fileno()).st_size - file.tell())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    try:
        return max(0, len(file.getbuffer()) - file.tell())
    except (AttributeError, ValueError, TypeError):
        return None


class _CappedReader:
    """``file`` for the unpickler, whose reads never ask for more than the file still holds:
    a length field of 2**40 in a small file is then a short read ("truncated"), not a huge
    buffer allocated up front."""

    def __init__(self, file: BinaryIO, remaining: int) -> None:
        self._file, self._left = file, remaining

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        data = self._file.read(n)
        self._left -= len(data)
        return data

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[:len(data)] = data
        return len(data)

    def readline(self, limit: int = -1) -> bytes:
        limit = self._left if limit is None or limit < 0 else min(limit, self._left)
        data = self._file.readline(limit)
        self._left -= len(data)
        return data


def safe_load(file: BinaryIO, source: str = "<pickle>") -> Any:
    """Unpickle plain data (containers, scalars, numpy arrays) from an open binary ``file``.

    Raises :class:`DataError` naming ``source`` and the reason for anything else.
    """
    remaining = _remaining_bytes(file)
    try:
        reader = file if remaining is None else _CappedReader(file, remaining)
        raw = RestrictedUnpickler(reader, source).load()
        return _Rebuilder(_Budget(remaining or 0))(raw)
    except _Refused as exc:  # a limit stays a LimitError (and a DataError)
        error = limits.limit_error(DataError) if isinstance(exc, LimitError) else DataError
        raise error(f"{source}: refused to load the pickle: {exc}.") from None
    except DataError:
        raise
    except RecursionError:
        raise DataError(f"{source}: the pickle is nested too deeply to load.") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{source}: not a readable pickle ({type(exc).__name__}: {exc}); the file may be "
            "truncated or not a pickle at all."
        ) from None


def safe_load_path(path: str | os.PathLike) -> Any:
    """Unpickle plain data from the file at ``path`` (see :func:`safe_load`)."""
    source = os.fspath(path)
    try:
        size = os.path.getsize(source)
    except OSError as exc:
        raise DataError(f"{source}: cannot open ({exc.strerror or exc}).") from None
    if size == 0:
        raise DataError(f"{source}: the file is empty (0 bytes); nothing to load.")
    with open(source, "rb") as handle:
        return safe_load(handle, source)
