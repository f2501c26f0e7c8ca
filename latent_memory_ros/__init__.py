"""Map-free learned localisation for ROS 2: an exported student network with fixed-size memory.

The runtime, geometry and evaluation modules import no ROS; ``node`` adapts them to rclpy.
"""

__version__ = "0.1.0"
