"""kosent: Korean sentiment classification that trains, sweeps and serves on Ray."""

__version__ = "0.1.0"
