"""The one recorded-run record, :class:`latent_memory_ros.sequence.Sequence`.

It lives in the ROS-free core, where the dataset readers that return it live too; the
training package imports it from there (never the other way round).
"""

from latent_memory_ros.sequence import Sequence

__all__ = ["Sequence"]
