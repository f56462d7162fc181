"""A bounded, allocation-free check that bytes are one well-formed msgpack value.

msgpack's C unpacker before 1.2.0 (the newest for Python 3.8, the boards' Python) leaks the
arrays and maps it has opened whenever it fails inside them: a 1 kB message nested 1 030
deep leaked 80 kB, and any error inside a nested value (bad UTF-8, a truncated string, an
integer map key) leaked a little. Messages that pass this check decode without an error, so
that path is never taken; they are also at most ``MAX_DEPTH`` deep with ``MAX_ITEMS``
values, far more than a request needs (3 levels, ~20 values)::

    check_message(payload)               # raises BadRequest, or returns
    message = msgpack.unpackb(payload, raw=False)
"""

from __future__ import annotations

from typing import Dict, List, Union

from .errors import BadRequest

MAX_DEPTH = 32
MAX_ITEMS = 1024
Buffer = Union[bytes, memoryview]

# format byte → bytes that follow it, for scalars of a fixed size
FIXED: Dict[int, int] = {0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
FIXED.update({0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8})
# format byte → (size of its length field, kind)
SIZED = {
    0xC4: (1, "bin"),
    0xC5: (2, "bin"),
    0xC6: (4, "bin"),
    0xD9: (1, "str"),
    0xDA: (2, "str"),
    0xDB: (4, "str"),
    0xDC: (2, "array"),
    0xDD: (4, "array"),
    0xDE: (2, "map"),
    0xDF: (4, "map"),
}


def _bad(why: str) -> BadRequest:
    return BadRequest(f"message is not valid msgpack: {why}")


def _head(data: Buffer, pos: int) -> tuple:
    """``(kind, length, position after the header)`` of the value at ``pos``."""
    byte = data[pos]
    pos += 1
    if byte <= 0x7F or byte >= 0xE0 or byte in (0xC0, 0xC2, 0xC3):
        return "scalar", 0, pos
    if byte in FIXED:
        return "scalar", FIXED[byte], pos
    if 0x80 <= byte <= 0x8F:
        return "map", byte & 0x0F, pos
    if 0x90 <= byte <= 0x9F:
        return "array", byte & 0x0F, pos
    if 0xA0 <= byte <= 0xBF:
        return "str", byte & 0x1F, pos
    if byte in SIZED:
        size, kind = SIZED[byte]
        if pos + size > len(data):
            raise _bad(f"truncated at byte {pos}")
        return kind, int.from_bytes(data[pos : pos + size], "big"), pos + size
    raise _bad(f"byte 0x{byte:02x} at {pos - 1} is not a msgpack type this protocol uses")


def check_message(data: Buffer) -> None:
    """Raise :class:`BadRequest` unless ``data`` is exactly one well-formed msgpack value with
    string or bytes map keys, valid UTF-8 strings and no extension types, within the bounds."""
    pos, items = 0, 0
    stack: List[List[int]] = [[1, 0]]  # per open container: values left, 1 if it is a map
    while stack:
        top = stack[-1]
        if top[0] == 0:
            stack.pop()
            continue
        is_key = top[1] == 1 and top[0] % 2 == 0
        top[0] -= 1
        items += 1
        if items > MAX_ITEMS:
            raise _bad(f"more than {MAX_ITEMS} values")
        if pos >= len(data):
            raise _bad(f"truncated at byte {pos}")
        kind, length, pos = _head(data, pos)
        if is_key and kind not in ("str", "bin"):
            raise _bad(f"a map key at byte {pos} is not a string")
        if kind in ("map", "array"):
            if len(stack) >= MAX_DEPTH:
                raise _bad(f"nested deeper than {MAX_DEPTH} levels")
            stack.append([2 * length if kind == "map" else length, int(kind == "map")])
            continue
        if pos + length > len(data):
            raise _bad(f"truncated at byte {len(data)}")
        if kind == "str":
            try:
                str(data[pos : pos + length], "utf-8")
            except UnicodeDecodeError:
                raise _bad(f"the string at byte {pos} is not UTF-8") from None
        pos += length
    if pos != len(data):
        raise _bad(f"{len(data) - pos} extra bytes after the message")
