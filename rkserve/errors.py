"""The one error tree of rkserve.

Every failure a user can cause or meet is an :class:`RkserveError` with a stable string
``code``. The daemon turns it into an error reply carrying that code; the client turns the
code back into the same class, so ``except BadImage`` works on both sides of the wire::

    RkserveError
    ├── BadRequest            bad_request           malformed message, wrong types, bad params
    │   ├── BadImage          bad_image             undecodable, empty, too small, wrong tensor
    │   ├── BadTensor         bad_tensor            named inputs that do not fit the model's
    │   ├── TooLarge          too_large             over the message or pixel limit
    │   └── UnsupportedVersion unsupported_version  unknown protocol version
    ├── UnknownModel          unknown_model         no model by that name
    ├── ModelUnavailable      model_unavailable     known, but failed to load or refused
    ├── ConfigError           config_error          model.yaml / rkserve.yaml invalid
    ├── RknnFileError         bad_rknn_file         not an RKNN file, truncated, unreadable
    ├── BackendError          backend_error         the runtime failed (load, init, inference)
    ├── Overloaded            overloaded            the model's queue is full
    ├── DeadlineExceeded      deadline_exceeded     the deadline passed before the NPU ran it
    ├── Unavailable           unavailable           client side: no endpoint answered in time
    └── InternalError         internal              a bug: please report it
"""

from __future__ import annotations

from typing import Any, Dict, Type


class RkserveError(Exception):
    """Base class; ``code`` is stable and travels on the wire.

    ``request_id`` is the id of the request the error answers, when the error was raised
    while that request was being read (None when it could not be read, or is not known).
    """

    code = "internal"

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id

    def __str__(self) -> str:
        return self.message


class BadRequest(RkserveError):
    code = "bad_request"


class BadImage(BadRequest):
    code = "bad_image"


class BadTensor(BadRequest):
    code = "bad_tensor"


class TooLarge(BadRequest):
    code = "too_large"


class UnsupportedVersion(BadRequest):
    code = "unsupported_version"


class UnknownModel(RkserveError):
    code = "unknown_model"


class ModelUnavailable(RkserveError):
    code = "model_unavailable"


class ConfigError(RkserveError):
    code = "config_error"


class RknnFileError(RkserveError):
    code = "bad_rknn_file"


class BackendError(RkserveError):
    code = "backend_error"


class Overloaded(RkserveError):
    code = "overloaded"


class DeadlineExceeded(RkserveError):
    code = "deadline_exceeded"


class Unavailable(RkserveError):
    code = "unavailable"


class InternalError(RkserveError):
    code = "internal"


def _all_subclasses(cls: Type[RkserveError]) -> Dict[str, Type[RkserveError]]:
    found = {cls.code: cls}
    for sub in cls.__subclasses__():
        found.update(_all_subclasses(sub))
    return found


def error_class(code: str) -> Type[RkserveError]:
    """The class for a wire ``code``; unknown codes map to :class:`RkserveError`."""
    return _all_subclasses(RkserveError).get(code, RkserveError)


def from_code(code: str, message: str) -> RkserveError:
    """Rebuild the exception a server reported, for re-raising on the client side."""
    return error_class(code)(message)
