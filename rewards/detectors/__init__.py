"""Object detectors that feed GenEval scoring: each returns `Detection`s for one image."""
