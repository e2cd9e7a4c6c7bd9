"""tideline: keeps trading models good as markets change."""

__version__ = "0.1.0"
