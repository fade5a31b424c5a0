"""Coverage-guided fuzz targets (atheris) for the sans-IO core; see fuzz/targets.py."""
