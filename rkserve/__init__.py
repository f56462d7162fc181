"""rkserve: an inference daemon for Rockchip RK3566/RK3568 NPUs.

``from rkserve import Client`` for the client; the rest lives in its modules.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Client", "InferResult", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: the converter's environment has no pyzmq
    if name in ("Client", "InferResult"):
        from . import client

        return getattr(client, name)
    raise AttributeError(f"module 'rkserve' has no attribute {name!r}")
