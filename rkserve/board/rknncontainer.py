"""The bytes of a ``.rknn`` file: header, flatbuffer root strings, trailing JSON.

Layout (see ``docs/RKNN_FORMAT.md``)::

    0x00  b"RKNN" + 4 zero bytes
    0x08  uint64 LE  format version (1, 2, 6 seen)
    0x10  uint64 LE  payload length
    0x18  payload (format 1) | reserved zeros up to 0x40, payload (formats 2 and later)
    ....  uint64 LE  JSON length, then the JSON (graph, tensors, version, target_platform)

The payload is a flatbuffer with file identifier ``RKNN``; its root table holds metadata
strings at stable field indices (``_ROOT_STRINGS``). Only those are read, by seeking.
"""

from __future__ import annotations

import ast
import io
import json
import os
import struct
import tokenize
from dataclasses import dataclass
from typing import IO, Any, Dict, List, NoReturn, Union

from ..errors import RknnFileError

MAGIC = b"RKNN"
_V1_PAYLOAD, _PAYLOAD = 0x18, 0x40
_MAX_JSON = 64 << 20
_MAX_STRING = 4 << 20
_MAX_LITERAL = 1 << 20
_EVAL_ERRORS = (
    ValueError,
    TypeError,
    SyntaxError,
    MemoryError,
    RecursionError,
    tokenize.TokenError,
)
# Field index in the payload's root table -> meaning (identical in formats 1, 2 and 6).
_ROOT_STRINGS = {
    1: "npu",  # "RKNPU lite" (RK3566/RK3568), "RKNPU v2" (RK3588)
    3: "attrs",  # "{'attrs': {...}, 'quant_tab': ...}" (2+) | "Generated from compiler ..." (1)
    7: "toolkit",  # "2.3.2(compiler version: 2.3.2 (e045de294f@2025-04-07T19:48:25))"
    8: "platform",  # "rk3568"
    9: "source",  # "ONNX"
    12: "inputs",  # '{"input": {"dtype": "int8", "layout": "NHWC"}}'
    13: "outputs",  # '{"output": {"dtype": "float16", "layout": "NCHW"}}'
}
_SNIFF = ((b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"PK\x03\x04", "a zip"))


@dataclass(frozen=True)
class Container:
    """The parts of a ``.rknn`` file that describe it; parsed, not yet interpreted."""

    size: int
    format_version: int
    meta: Dict[str, Any]  # the trailing JSON
    strings: Dict[str, str]  # root-table strings by their _ROOT_STRINGS name
    attrs: Dict[str, Any]  # the Python-literal block's "attrs": per-tensor shape/mean/std/layout
    input_types: Dict[str, Any]  # name -> {"dtype": ..., "layout": ...} at runtime
    output_types: Dict[str, Any]

    def norm_tensors(self, role: str) -> List[Dict[str, Any]]:
        """The JSON's tensor records for ``role`` ("input" | "output"), in index order."""
        by_id = {
            t["tensor_id"]: t
            for t in _list(self.meta.get("norm_tensor"))
            if isinstance(t, dict) and isinstance(t.get("tensor_id"), int)
        }
        links = [
            g
            for g in _list(self.meta.get("graph"))
            if isinstance(g, dict) and g.get("left") == role and g.get("right") == "norm_tensor"
        ]
        links.sort(key=lambda g: _int(g.get("left_tensor_id")))
        ids = [_int(g.get("right_tensor_id"), -1) for g in links]
        return [by_id[i] for i in ids if i in by_id]


def read_container(path: Union[str, os.PathLike[str]]) -> Container:
    """Parse the file at ``path``; every failure is a :class:`RknnFileError` naming it."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            return _parse(_File(fh, name))
    except IsADirectoryError:
        raise RknnFileError(f"{name}: is a directory, not an .rknn file") from None
    except FileNotFoundError:
        raise RknnFileError(f"{name}: no such file") from None
    except OSError as exc:
        raise RknnFileError(f"{name}: cannot read: {exc.strerror or exc}") from None


class _File:
    def __init__(self, fh: IO[bytes], name: str) -> None:
        self.fh, self.name = fh, name
        self.size = os.fstat(fh.fileno()).st_size

    def read(self, offset: int, count: int) -> bytes:
        self.fh.seek(offset)
        return self.fh.read(count)

    def fail(self, why: str) -> NoReturn:
        raise RknnFileError(f"{self.name}: {why}")


def _parse(f: _File) -> Container:
    if f.size == 0:
        f.fail("empty file (0 bytes), not an RKNN model")
    head = f.read(0, _PAYLOAD)
    if head[:4] != MAGIC:
        f.fail(_not_rknn(head, f.name))
    if len(head) < _V1_PAYLOAD:
        f.fail(f"truncated: {len(head)} bytes, shorter than the {_V1_PAYLOAD}-byte RKNN header")
    version, length = struct.unpack_from("<QQ", head, 8)
    start = _payload_start(f, version)
    meta = _trailing_json(f, start, length)
    strings = _root_strings(f, start, length)
    return Container(
        size=f.size,
        format_version=version,
        meta=meta,
        strings=strings,
        attrs=_mapping(_literal(strings.get("attrs", "")).get("attrs")),
        input_types=_json_object(strings.get("inputs", "")),
        output_types=_json_object(strings.get("outputs", "")),
    )


def _not_rknn(head: bytes, name: str) -> str:
    why = f"not an RKNN model (magic {head[:4]!r} instead of {MAGIC!r})"
    for magic, kind in _SNIFF:
        if head.startswith(magic):
            return f"{why}: it looks like {kind}"
    return f"{why}; convert ONNX with 'rkserve convert'"


def _payload_start(f: _File, version: int) -> int:
    # Format 1 has a 24-byte header, later ones 64 bytes. The payload is a flatbuffer whose
    # file identifier (its bytes 4-7) is "RKNN" too, which tells the two apart.
    order = (_V1_PAYLOAD, _PAYLOAD) if version == 1 else (_PAYLOAD, _V1_PAYLOAD)
    for start in order:
        if f.read(start + 4, 4) == MAGIC:
            return start
    return order[0]


def _trailing_json(f: _File, start: int, length: int) -> Dict[str, Any]:
    end = start + length
    if end > f.size:
        f.fail(
            f"truncated: the header announces a {length:,}-byte payload at {start:#x}, "
            f"but the file is only {f.size:,} bytes"
        )
    if end + 8 > f.size:
        f.fail(f"truncated: no metadata JSON after the payload (file ends at {f.size:,} bytes)")
    (size,) = struct.unpack("<Q", f.read(end, 8))
    if size == 0 or end + 8 + size > f.size:
        f.fail(
            f"truncated: the metadata JSON at {end + 8:#x} should be {size:,} bytes, "
            f"but the file ends {f.size - end - 8:,} bytes after it starts"
        )
    if size > _MAX_JSON:
        f.fail(f"metadata JSON of {size:,} bytes is implausibly large")
    try:
        meta = json.loads(f.read(end + 8, size).decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        f.fail(f"the metadata JSON after the payload is not valid: {exc}")
    if not isinstance(meta, dict):
        f.fail(f"the metadata JSON after the payload is a {type(meta).__name__}, not an object")
    return meta


class _Malformed(Exception):
    """The payload is not the flatbuffer this module knows."""


def _root_strings(f: _File, start: int, length: int) -> Dict[str, str]:
    """Best effort: a payload this reader does not understand yields fewer strings."""

    def raw(at: int, count: int) -> bytes:
        if at < 0 or count < 0 or at + count > length:
            raise _Malformed(at)
        return f.read(start + at, count)

    def u32(at: int) -> int:
        return int(struct.unpack("<I", raw(at, 4))[0])

    def string(at: int) -> str:
        target = at + u32(at)
        count = u32(target)
        if count > _MAX_STRING:
            raise _Malformed(target)
        return raw(target + 4, count).decode("utf-8", "replace")

    found: Dict[str, str] = {}
    try:
        root = u32(0)
        vtable = root - struct.unpack("<i", raw(root, 4))[0]
        (vt_size,) = struct.unpack("<H", raw(vtable, 2))
        count = max(vt_size - 4, 0) // 2
        offsets = struct.unpack(f"<{count}H", raw(vtable + 4, count * 2))
    except _Malformed:
        return found
    for index, key in _ROOT_STRINGS.items():
        if index < count and offsets[index]:
            try:
                found[key] = string(root + offsets[index])
            except _Malformed:
                continue
    return found


def _literal(text: str) -> Dict[str, Any]:
    """The Python-literal metadata block (``repr`` of a dict); {} if absent or unreadable."""
    if not text.startswith("{") or len(text) > _MAX_LITERAL:
        return {}
    try:
        return _mapping(ast.literal_eval(text))
    except _EVAL_ERRORS:
        pass
    try:
        return _mapping(ast.literal_eval(_nonfinite_as_literals(text)))
    except _EVAL_ERRORS:
        return {}


def _nonfinite_as_literals(text: str) -> str:
    # repr() writes inf/nan as bare names, which literal_eval refuses.
    swap = {"inf": "1e999", "nan": "None"}
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return tokenize.untokenize(
        (tok.type, swap.get(tok.string, tok.string) if tok.type == tokenize.NAME else tok.string)
        for tok in tokens
    )


def _json_object(text: str) -> Dict[str, Any]:
    if not text.startswith("{"):
        return {}
    try:
        return _mapping(json.loads(text))
    except (ValueError, RecursionError):
        return {}


def _mapping(value: Any) -> Dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> List[Any]:
    return value if isinstance(value, list) else []


def _int(value: Any, default: int = 0) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default
