"""Board fit: does this board, its runtime and each model belong together?

``probes`` reads board facts under a root path (SoC, NPU driver, librknnrt, rknn_server,
the NPU's device node, found through sysfs by ``devices``), ``rknnfile`` (with ``rknncontainer``) and ``rknnops`` read a
``.rknn`` without any runtime, ``checks`` is the compatibility policy over both, and
``doctor`` turns the checks into ``rkserve doctor``'s report. The loader applies the same
checks before it serves a model with rknn-toolkit-lite2.
"""
