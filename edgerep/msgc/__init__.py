"""MobileNetV2-MSGC deploy forms: ``to_dynamic`` (exact, per-sample masks) and ``to_static`` (masks fixed offline)."""

from .convert import GateStats, calibrate, select_channels, to_dynamic, to_static

__all__ = ["GateStats", "calibrate", "select_channels", "to_dynamic", "to_static"]
