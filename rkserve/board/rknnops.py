"""Which ops of a ``.rknn`` model need a custom-op plugin on the board (best effort).

A model converted with custom ops (rknn-toolkit2's ``reg_custom_op``) only runs where
librknnrt finds their code: a plugin library ``librkcst_<op>.so`` in
``/usr/lib/rknpu/op_plugins/`` (Linux), or the application registering them itself. The
container does not list them; what is read here, from real files (``docs/RKNN_FORMAT.md``):
each graph node is a flatbuffer table with its name ``"<OnnxType>:<name>"`` (field 2), a
byte field 3 that is 2 for ops on the NPU, and a byte field 7, an op code, on ops the
runtime itself knows. A node is a custom op when its type starts with ``cst`` (Rockchip's
rule for non-standard custom ops) or when it has an op code but runs outside the NPU and is
not one of the runtime's own ``ex*`` CPU kernels (a standard ONNX op replaced by a custom
one, like the ArgMax of Rockchip's custom GPU op demo)::

    >>> custom_ops("pp_human_segv2_custom_argmax.rknn")
    ('ArgMax',)
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import List, Optional, Set, Tuple, Union

PLUGIN_DIR = "usr/lib/rknpu/op_plugins"  # under the board's root
PLUGIN_PREFIX = "librkcst_"
_NODE_NAME = re.compile(rb"([A-Za-z][A-Za-z0-9_]{0,63}):[^\x00]{1,255}\x00")
_NPU_TARGET = 2
_SEARCH_BACK = 1024  # a node's table lies shortly before its name string


def custom_ops(path: Union[str, os.PathLike]) -> Tuple[str, ...]:
    """The custom op types in the model's graph, sorted; () when there are none."""
    data = Path(path).read_bytes()
    found: Set[str] = set()
    for match in _NODE_NAME.finditer(data):
        start = match.start() - 4  # the string's length prefix
        if start < 0 or _u32(data, start) != len(match.group(0)) - 1:
            continue
        kind = match.group(1).decode("ascii")
        if kind.startswith("cst") or _replaced_op(data, start):
            found.add(kind)
    return tuple(sorted(found))


def _replaced_op(data: bytes, string_at: int) -> bool:
    """The node naming the string has an op code but runs outside the NPU (not an ex* op)."""
    fields = _node_fields(data, string_at)
    if fields is None:
        return False
    name = data[string_at + 4 : data.index(b":", string_at + 4)]
    target, opcode = fields
    return opcode is not None and target != _NPU_TARGET and not name.startswith(b"ex")


def _node_fields(data: bytes, string_at: int) -> Optional[Tuple[Optional[int], Optional[int]]]:
    """``(field 3, field 7)`` bytes of the node table whose field 2 points at ``string_at``."""
    first = max(0, string_at - _SEARCH_BACK) & ~3
    for ref in range(first, string_at, 4):
        if ref + _u32(data, ref) != string_at:
            continue
        for back in range(4, 64, 4):
            table = ref - back
            offsets = _vtable(data, table)
            if offsets is not None and len(offsets) >= 8 and offsets[2] == back:
                return _byte(data, table, offsets[3]), _byte(data, table, offsets[7])
    return None


def _vtable(data: bytes, table: int) -> Optional[List[int]]:
    if table < 0 or table + 4 > len(data):
        return None
    vtable = table - struct.unpack_from("<i", data, table)[0]
    if not 0 <= vtable <= len(data) - 4:
        return None
    size = struct.unpack_from("<H", data, vtable)[0]
    if size < 4 or size > 128 or size % 2 or vtable + size > len(data):
        return None
    return list(struct.unpack_from(f"<{(size - 4) // 2}H", data, vtable + 4))


def _byte(data: bytes, table: int, offset: int) -> Optional[int]:
    return data[table + offset] if offset and table + offset < len(data) else None


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0]) if at + 4 <= len(data) else -1


def plugins(root: Path = Path("/")) -> List[Path]:
    """The custom-op plugin libraries librknnrt loads on the board under ``root``."""
    folder = root / PLUGIN_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name.startswith(PLUGIN_PREFIX))


def plugin_for(op: str, libraries: List[Path]) -> Optional[Path]:
    """The plugin library named for ``op`` (``ArgMax`` → ``librkcst_argmax.so``), if any."""
    stem = op[3:] if op.startswith("cst") else op
    for library in libraries:
        if stem.lower() in library.name.lower():
            return library
    return None


def describe_custom(ops: Tuple[str, ...], root: Path = Path("/")) -> str:
    """One line: the custom ops and, for each, whether a plugin library is present."""
    if not ops:
        return "none"
    libraries = plugins(root)
    where = "/" + PLUGIN_DIR
    parts = []
    for op in ops:
        library = plugin_for(op, libraries)
        parts.append(f"{op} (plugin {library.name})" if library else f"{op} (no plugin)")
    missing = (
        ""
        if all(plugin_for(op, libraries) for op in ops)
        else (f"; the runtime cannot run it without a {PLUGIN_PREFIX}<op>.so in {where}")
    )
    return ", ".join(parts) + missing
