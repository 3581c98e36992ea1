"""Imports every architecture module so that their models register (see registry._load_all)."""

from . import (
    mobilenetv2,  # noqa: F401
    mobileone,  # noqa: F401
    msgc,  # noqa: F401
    repghostnet,  # noqa: F401
    repvgg,  # noqa: F401
    resnet,  # noqa: F401
)
