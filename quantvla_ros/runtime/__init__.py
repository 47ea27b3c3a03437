"""Runtime: observation dict -> action chunk, with no ROS dependency."""
