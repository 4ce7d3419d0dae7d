"""ROS 2 nodes and message conversion: the only layer of vla_ros that imports rclpy."""
