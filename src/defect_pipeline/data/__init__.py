"""Data loading, validation and the built-in synthetic demo dataset."""
