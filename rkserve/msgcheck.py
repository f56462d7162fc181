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

from typing import Dict, List, Optional, Tuple, Union

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


def _heads() -> List[Optional[Tuple[str, int, int]]]:
    """Per format byte: ``(kind, length, size of its length field)`` (a fixed-size value's
    length is its payload; a sized one's is read from its field), None if not allowed."""
    table: List[Optional[Tuple[str, int, int]]] = [None] * 256
    for byte in (*range(0x00, 0x80), *range(0xE0, 0x100), 0xC0, 0xC2, 0xC3):
        table[byte] = ("scalar", 0, 0)
    for byte, size in FIXED.items():
        table[byte] = ("scalar", size, 0)
    for byte in range(0x80, 0xC0):
        kind = ("map", "array", "str", "str")[(byte - 0x80) >> 4]
        table[byte] = (kind, byte & (0x1F if kind == "str" else 0x0F), 0)
    for byte, (size, kind) in SIZED.items():
        table[byte] = (kind, 0, size)
    return table


HEADS = _heads()


def check_message(data: Buffer) -> None:
    """Raise :class:`BadRequest` unless ``data`` is exactly one well-formed msgpack value with
    string or bytes map keys, valid UTF-8 strings and no extension types, within the bounds.
    One loop over a table of the format bytes: it runs for every request."""
    pos, items, end = 0, 0, len(data)
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
        if pos >= end:
            raise _bad(f"truncated at byte {pos}")
        head = HEADS[data[pos]]
        if head is None:
            raise _bad(f"byte 0x{data[pos]:02x} at {pos} is not a msgpack type this protocol uses")
        kind, length, size = head
        pos += 1
        if size:
            if pos + size > end:
                raise _bad(f"truncated at byte {pos}")
            length = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        if is_key and kind not in ("str", "bin"):
            raise _bad(f"a map key at byte {pos} is not a string")
        if kind == "map" or kind == "array":
            if len(stack) >= MAX_DEPTH:
                raise _bad(f"nested deeper than {MAX_DEPTH} levels")
            stack.append([2 * length if kind == "map" else length, int(kind == "map")])
            continue
        if pos + length > end:
            raise _bad(f"truncated at byte {end}")
        if kind == "str":
            try:
                str(data[pos : pos + length], "utf-8")
            except UnicodeDecodeError:
                raise _bad(f"the string at byte {pos} is not UTF-8") from None
        pos += length
    if pos != end:
        raise _bad(f"{end - pos} extra bytes after the message")
