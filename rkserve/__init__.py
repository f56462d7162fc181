"""rkserve: an inference daemon for Rockchip RK3566/RK3568 NPUs."""

from __future__ import annotations

__version__ = "0.1.0"
