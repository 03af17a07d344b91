"""The grader's exchange with its worker: data only, both ways, every frame bounded and checked.

A frame is ``HEADER(n)`` followed by ``n`` bytes: a JSON document, then the
arrays it refers to, each as ``HEADER(len)`` + ``.npy`` bytes. In the JSON,
an array is ``{"$array": i}`` (its index among the frame's arrays), a stored
cache is ``{"$handle": name}``, a dict is ``{"$dict": {...}}``, a tuple or
list is a JSON list; numbers, strings, booleans and null are themselves.
Nothing else can be expressed, so no reply can name a class or a function:
the grader never unpickles anything. Arrays are read with ``allow_pickle=False``
and must be numeric (bool, int, uint, float), with a size that matches their
bytes. The worker runs the student's code in its own process, so a student
can write a frame of its own; the checks here bound what such a frame can do
to lying about that student's numbers.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
from typing import Any, NamedTuple

import numpy as np

HEADER = struct.Struct(">Q")
#: Bounds on one frame: total bytes, arrays, elements per array, string length, nesting, items per container.
MAX_FRAME_BYTES = 64 << 20
MAX_DOCUMENT_BYTES = 4 << 20
MAX_ARRAYS = 64
MAX_ELEMENTS = 1 << 23
MAX_STRING = 4000
MAX_DEPTH = 6
MAX_ITEMS = 256
NUMERIC_KINDS = "biuf"
#: Characters a terminal or an editor acts on rather than shows: C0 and C1 controls (ESC starts the
#: sequences that clear a screen, retitle a window or write the clipboard), DEL, and Unicode's
#: bidirectional and invisible formatting characters (text that reads otherwise than it is).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


class ProtocolError(ValueError):
    """A frame that is not data of the agreed form (too large, malformed, an unknown tag, a non-numeric array)."""


class Handle(NamedTuple):
    """Stands for a cache the worker keeps (``keep=name`` of an earlier call)."""

    name: str


# ----------------------------------------------------------------------------- encode

def _encode(value, arrays: list, depth: int):
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Handle):
        return {"$handle": value.name}
    if isinstance(value, np.generic) and value.dtype.kind in NUMERIC_KINDS:
        return value.item()
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in NUMERIC_KINDS:
            raise ProtocolError(f"an array of dtype {value.dtype} is not numeric")
        arrays.append(value)
        return {"$array": len(arrays) - 1}
    if isinstance(value, dict):
        return {"$dict": {str(k): _encode(v, arrays, depth + 1) for k, v in value.items()}}
    if isinstance(value, (tuple, list)):
        return [_encode(v, arrays, depth + 1) for v in value]
    raise ProtocolError(f"a {type(value).__name__} is not data the protocol carries")


def encode(value) -> bytes:
    """``value`` (plain data and numeric arrays) as one frame's body."""
    arrays: list[np.ndarray] = []
    document = json.dumps(_encode(value, arrays, 0), allow_nan=True).encode()
    parts = [HEADER.pack(len(document)), document]
    for array in arrays:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
        parts += [HEADER.pack(buffer.tell()), buffer.getvalue()]
    return b"".join(parts)


def frame(value) -> bytes:
    """The whole frame: length header and body."""
    body = encode(value)
    return HEADER.pack(len(body)) + body


# ----------------------------------------------------------------------------- decode

def _read_array(data: bytes) -> np.ndarray:
    """One .npy blob: numeric dtype, at most MAX_ELEMENTS, exactly as many bytes as its header says."""
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ProtocolError(f"npy version {version} is not accepted")
    except ValueError as exc:  # a bad magic string or header
        raise ProtocolError(f"not an .npy array: {exc}") from None
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"an array of dtype {dtype} is not numeric")
    if len(shape) > 32 or any(not isinstance(n, int) or n < 0 for n in shape):
        raise ProtocolError(f"an array of shape {shape} is not valid")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"an array of {count} elements is more than the {MAX_ELEMENTS} accepted")
    offset = stream.tell()
    if len(data) - offset != count * dtype.itemsize:
        raise ProtocolError(f"an array of shape {shape} and dtype {dtype} does not match its {len(data) - offset} bytes")
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array.reshape(shape, order="F" if fortran else "C").copy()


def _decode(value, arrays: list, depth: int):
    if depth > MAX_DEPTH:
        raise ProtocolError(f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise ProtocolError(f"a string of {len(value)} characters is longer than {MAX_STRING}")
        return value
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            raise ProtocolError(f"a list of {len(value)} items is longer than {MAX_ITEMS}")
        return tuple(_decode(v, arrays, depth + 1) for v in value)
    if isinstance(value, dict) and len(value) == 1:
        (tag, inner), = value.items()
        if tag == "$array" and isinstance(inner, int) and not isinstance(inner, bool) and 0 <= inner < len(arrays):
            return arrays[inner]
        if tag == "$handle" and isinstance(inner, str) and len(inner) <= MAX_STRING:
            return Handle(inner)
        if tag == "$dict" and isinstance(inner, dict) and len(inner) <= MAX_ITEMS:
            return {_decode(k, arrays, depth + 1): _decode(v, arrays, depth + 1) for k, v in inner.items()}
    raise ProtocolError("a value that is not data of the agreed form")


def _split(body: bytes, offset: int) -> tuple[bytes, int]:
    if offset + HEADER.size > len(body):
        raise ProtocolError("a frame cut short")
    size = HEADER.unpack_from(body, offset)[0]
    start = offset + HEADER.size
    if start + size > len(body):
        raise ProtocolError("a frame cut short")
    return body[start:start + size], start + size


def decode(body: bytes):
    """A frame's body as Python data (tuples for lists, ``Handle`` for handles); raises ProtocolError."""
    document, offset = _split(body, 0)
    if len(document) > MAX_DOCUMENT_BYTES:
        raise ProtocolError(f"a JSON document of {len(document)} bytes is larger than the {MAX_DOCUMENT_BYTES} accepted")
    blobs = []
    while offset < len(body):
        if len(blobs) == MAX_ARRAYS:
            raise ProtocolError(f"more than {MAX_ARRAYS} arrays in one frame")
        blob, offset = _split(body, offset)
        blobs.append(blob)
    try:
        parsed = json.loads(document.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {str(exc)[:200]}") from None
    return _decode(parsed, [_read_array(blob) for blob in blobs], 0)


def body_size(header: bytes) -> int:
    """The body length a frame's header announces; raises ProtocolError beyond MAX_FRAME_BYTES."""
    size = HEADER.unpack(header)[0]
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(f"a frame of {size} bytes is larger than the {MAX_FRAME_BYTES} accepted")
    return size


# ----------------------------------------------------------------------------- checking a decoded reply

def printable(text: str) -> str:
    """Text from the student's process (an exception's message, what it printed) safe to show anywhere:
    each control or formatting character written out as its escape (``\\x1b``, ``\\u202e``)."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def expect(value, kind, what: str):
    """``value`` when it is of ``kind`` (a type or tuple of types), else ProtocolError naming ``what``."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise ProtocolError(f"{what}: expected {_names(kind)}, got {type(value).__name__}")
    return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _names(kind) -> str:
    return " or ".join("null" if k is type(None) else k.__name__ for k in _as_tuple(kind))


def field(reply: dict, key: str, kind, default: Any = ...) -> Any:
    """``reply[key]`` checked against ``kind``; ``default`` when absent (absent and no default: an error)."""
    if key not in reply:
        if default is ...:
            raise ProtocolError(f"the reply has no {key!r}")
        return default
    return expect(reply[key], kind, key)
