"""Data layer: dataset specs, column detection, label alignment, transforms and built-in domains."""
