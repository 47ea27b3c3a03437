"""Recorded observations: the Observation type, buffers, their shard format and sources.

A leaf package (numpy and safetensors only): every other layer may import it, it imports
nothing else of quantvla_ros.
"""

from quantvla_ros.data.buffer import ObservationBuffer, RecordedBuffer, split_indices
from quantvla_ros.data.observation import Observation, ObservationError
from quantvla_ros.data.shard_format import BufferFormatError
from quantvla_ros.data.sources import open_observations
from quantvla_ros.data.synthetic import (
    SyntheticBuffer,
    synthetic_observation,
    synthetic_observations,
)

__all__ = [
    "BufferFormatError",
    "Observation",
    "ObservationBuffer",
    "ObservationError",
    "RecordedBuffer",
    "SyntheticBuffer",
    "open_observations",
    "split_indices",
    "synthetic_observation",
    "synthetic_observations",
]
