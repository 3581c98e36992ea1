"""Imports every architecture module so that their models register (see registry._load_all)."""

from . import repvgg  # noqa: F401
from . import mobileone  # noqa: F401
from . import repghostnet  # noqa: F401
from . import mobilenetv2  # noqa: F401
from . import resnet  # noqa: F401
from . import msgc  # noqa: F401
