"""Imports every architecture module so that their models register (see registry._load_all)."""

from . import repvgg  # noqa: F401
