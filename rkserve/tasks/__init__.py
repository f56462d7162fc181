"""Pre- and post-processing: pure numpy/cv2 functions on arrays, shared by the engine,
the daemon, the CLI and the tests."""
