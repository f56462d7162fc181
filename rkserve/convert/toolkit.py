"""One rknn-toolkit2 ``RKNN`` session, its failures turned into :class:`BackendError`.

Imported everywhere the conversion is; ``rknn.api`` itself only when a session starts, in
the converter's environment (``.venv-convert``).
"""

from __future__ import annotations

from typing import Any, Callable, List

import numpy as np

from ..errors import BackendError
from ..kernels.image import to_raw_input

Outputs = List[np.ndarray]  # every output of one inference, in the model's order


class Toolkit:
    """One ``RKNN`` object; failed calls (return codes or exceptions) become BackendError."""

    def __init__(self) -> None:
        from rknn.api import RKNN  # only in the converter's environment

        self.rknn = RKNN(verbose=False)

    def __enter__(self) -> Toolkit:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.rknn.release()

    def check(self, what: str, ret: Any) -> None:
        if ret != 0:
            raise BackendError(
                f"rknn-toolkit2 {what} failed (returned {ret!r}); its log above says why"
            )

    def call(self, what: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        try:
            ret = fn(**kwargs)
        except Exception as exc:  # the toolkit raises bare ValueError/RuntimeError with a traceback
            last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
            raise BackendError(f"rknn-toolkit2 {what} failed: {last[0]}") from None
        self.check(what, ret)

    def infer(self, image: np.ndarray) -> Outputs:
        """Every output of the simulator for one ``HxWx3 uint8`` image (raw NHWC, as on a board)."""
        outputs = self.rknn.inference(inputs=[to_raw_input(image)], data_format="nhwc")
        if not outputs:
            raise BackendError(
                "rknn-toolkit2 simulator inference returned nothing; see its log above"
            )
        return [np.asarray(o) for o in outputs]
