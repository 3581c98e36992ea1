"""Latency: measured on this host (``host``), predicted for device profiles (``predict``) from a graph's cost.

Data flows one way: an artifact file -> ``graph_cost`` (per-layer MACs / bytes / op kind) -> ``predict`` with a
``Profile`` (device_profiles/*.toml), or -> ``kernel_table.predict_table`` with a device file written by
``calibrate`` (edgerep's kernel suite timed on the device), or the artifact -> ``host.profile_artifact`` (timed
with its own runtime).
"""

from .graph_cost import GraphCost, LayerCost, graph_cost
from .host import HostProfile, profile_artifact, profile_torch
from .predict import Prediction, predict
from .profiles import Profile, get_profile, profile_names

__all__ = [
    "GraphCost", "HostProfile", "LayerCost", "Prediction", "Profile", "get_profile", "graph_cost", "predict",
    "profile_artifact", "profile_names", "profile_torch",
]
