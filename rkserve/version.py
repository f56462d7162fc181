"""rkserve's version, in a module of its own: the package, the client and the metrics read it."""

__version__ = "0.1.0"
