"""Frigate's own ``zmq`` detector plugin (../shared/reference/frigate), loaded by file location
for the tests, with stand-ins for the two ``frigate.detectors`` modules it imports; and the
tensor Frigate builds for it (``create_tensor_input`` then ``_transform_input``).

The stand-ins hold only what the plugin reads: ``DetectionApi.__init__`` keeps the config,
``BaseDetectorConfig`` is a pydantic model with ``model`` (path, size, model_type, input
layout and dtype, as Frigate's ``ModelConfig`` names them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types
from abc import ABC, abstractmethod
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (
    Path(os.environ.get("RKSERVE_SHARED_REFERENCE", ROOT.parent / "shared" / "reference"))
    / "frigate"
)
PLUGIN = REFERENCE / "frigate" / "detectors" / "plugins" / "zmq_ipc.py"


def plugin_file() -> Path:
    """The reference plugin; skipped outside CI when ../shared is absent, a failure in CI."""
    if not PLUGIN.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(
                f"Frigate's plugin is missing: {PLUGIN} (../shared must be beside the repo)"
            )
        pytest.skip(f"Frigate's reference plugin not found: {PLUGIN}")
    if sys.version_info < (3, 9):
        pytest.skip("Frigate's plugin is Python 3.9+ code (Frigate runs 3.11)")
    return PLUGIN


def needed(name: str) -> Any:
    """A package of the dev extras (pydantic for the plugin, onnx for the test model):
    skipped outside CI when absent, a failure in CI."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(name)
    return pytest.importorskip(name)


class ModelTypeEnum(str, Enum):  # Frigate's detector_config.ModelTypeEnum
    dfine = "dfine"
    rfdetr = "rfdetr"
    ssd = "ssd"
    yolox = "yolox"
    yolonas = "yolonas"
    yologeneric = "yolo-generic"


def _stand_ins() -> Dict[str, types.ModuleType]:
    pydantic = (
        pytest.importorskip("pydantic")
        if os.environ.get("CI") != "true"
        else __import__("pydantic")
    )

    class ModelConfig(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(protected_namespaces=())
        path: Optional[str] = None
        width: int = 320
        height: int = 320
        input_tensor: str = "nhwc"
        input_dtype: str = "int"
        model_type: ModelTypeEnum = ModelTypeEnum.ssd

    class BaseDetectorConfig(pydantic.BaseModel):
        model_config = pydantic.ConfigDict(
            extra="allow", arbitrary_types_allowed=True, protected_namespaces=()
        )
        type: str = "cpu"
        model: Optional[ModelConfig] = None
        model_path: Optional[str] = None

    class DetectionApi(ABC):
        @abstractmethod
        def __init__(self, detector_config: Any) -> None:
            self.detector_config = detector_config
            self.thresh = 0.4
            self.height = detector_config.model.height
            self.width = detector_config.model.width

        @abstractmethod
        def detect_raw(self, tensor_input: Any) -> Any: ...

    api = types.ModuleType("frigate.detectors.detection_api")
    api.DetectionApi = DetectionApi  # type: ignore[attr-defined]
    config = types.ModuleType("frigate.detectors.detector_config")
    config.BaseDetectorConfig = BaseDetectorConfig  # type: ignore[attr-defined]
    config.ModelConfig = ModelConfig  # type: ignore[attr-defined]
    return {
        "frigate": types.ModuleType("frigate"),
        "frigate.detectors": types.ModuleType("frigate.detectors"),
        "frigate.detectors.detection_api": api,
        "frigate.detectors.detector_config": config,
    }


@contextlib.contextmanager
def loaded_plugin() -> Iterator[types.ModuleType]:
    """Frigate's ``frigate/detectors/plugins/zmq_ipc.py`` as a module, its stand-ins in
    ``sys.modules`` for as long as this lasts."""
    with loaded_reference(plugin_file(), "frigate_zmq_ipc", _stand_ins()) as module:
        yield module


@contextlib.contextmanager
def loaded_reference(
    path: Path, name: str, stand_ins: Dict[str, types.ModuleType]
) -> Iterator[types.ModuleType]:
    """One of Frigate's files loaded from ``path`` as module ``name``, the Frigate modules it
    imports stood in for by ``stand_ins`` in ``sys.modules`` while it is used."""
    saved = {module: sys.modules.get(module) for module in stand_ins}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        for module, old in saved.items():
            if old is None:
                sys.modules.pop(module, None)
            else:
                sys.modules[module] = old


def detector(
    zmq_ipc: types.ModuleType,
    endpoint: str,
    path: str,
    size: int,
    input_tensor: str = "nhwc",
    input_dtype: str = "int",
    timeout_ms: int = 200,
) -> Any:
    """A ``ZmqIpcDetector`` as Frigate makes it from ``detectors: {type: zmq, ...}`` and
    ``model: {path, width, height, input_tensor, input_dtype, model_type: yolo-generic}``;
    it connects and makes its model handshake."""
    config = zmq_ipc.ZmqDetectorConfig(
        type="zmq",
        endpoint=endpoint,
        request_timeout_ms=timeout_ms,
        model={
            "path": path,
            "width": size,
            "height": size,
            "input_tensor": input_tensor,
            "input_dtype": input_dtype,
            "model_type": "yolo-generic",
        },
    )
    return zmq_ipc.ZmqIpcDetector(config)


def close(plugin: Any) -> None:
    """The plugin closes its socket in ``__del__``; tests close it now."""
    plugin._socket.close(linger=0)
    plugin._context.term()


def frigate_tensor(
    region: np.ndarray, size: int, input_tensor: str, input_dtype: str
) -> np.ndarray:
    """What Frigate hands ``detect_raw`` for an RGB ``region``: stretched to ``size`` with
    INTER_LINEAR when it is not that size, a batch axis (``create_tensor_input``), then
    transposed to NCHW and cast (``BaseLocalDetector._transform_input``)."""
    if region.shape[:2] != (size, size):
        region = cv2.resize(region, dsize=(size, size), interpolation=cv2.INTER_LINEAR)
    tensor = np.expand_dims(region, axis=0)
    if input_tensor == "nchw":
        tensor = np.transpose(tensor, (0, 3, 1, 2))
    if input_dtype == "float":
        tensor = tensor.astype(np.float32)
        tensor /= 255
    elif input_dtype == "float_denorm":
        tensor = tensor.astype(np.float32)
    return tensor


def expected_rows(result: Dict[str, Any]) -> np.ndarray:
    """The daemon's own detection reply as Frigate's ``[20, 6]`` table, in plain numpy:
    ``class, score, y1, x1, y2, x2`` normalised by the image's height and width."""
    table = np.zeros((20, 6), np.float32)
    height, width = result["height"], result["width"]
    for row, found in enumerate(result["detections"][:20]):
        x1, y1, x2, y2 = found["box"]
        table[row] = [
            found["index"],
            found["score"],
            y1 / height,
            x1 / width,
            y2 / height,
            x2 / width,
        ]
    return table
