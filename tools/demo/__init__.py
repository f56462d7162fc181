"""The demo models in ``models/``: their synthetic images (``shapes``), their recipes and
measurements (``models``, ``detector``) and their training (``train_models``,
``train_detector``, which need torch)."""
