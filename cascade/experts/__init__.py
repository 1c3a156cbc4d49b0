"""Expert backends, one per file, behind the small interface in `base.py`."""
