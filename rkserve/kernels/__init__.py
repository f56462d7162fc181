"""Pure kernels: arrays in, arrays out.

Image decoding and header reading, resizing and letterboxing, top-k, class maps and their
PNG/JPEG encodings, YOLO output decoding, NMS and boxes, label files. Nothing here knows
model.yaml, a backend or the daemon: the task plugins (:mod:`rkserve.tasks`), the converter,
the CLI and the tests call these functions with plain arguments.
"""
