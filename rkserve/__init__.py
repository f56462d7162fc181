"""rkserve: an inference daemon for Rockchip RK3566/RK3568 NPUs.

``from rkserve import Client`` for the client; the rest lives in its modules.
"""

from __future__ import annotations

from .client import Client, InferResult
from .version import __version__

__all__ = ["Client", "InferResult", "__version__"]
