"""Sweeper: keeps TRON deposit addresses swept into one wallet."""

__version__ = "0.1.0"
