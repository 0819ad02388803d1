"""Importing this module registers the built-in data sets."""

from trainwright.data import synthetic, tabular, vision  # noqa: F401
