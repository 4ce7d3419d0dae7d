"""Policy evaluation: open-loop comparison with recorded episodes (open_loop) and the ROS-free
parts of closed-loop evaluation (closed_loop; its rclpy driver is vla_ros.ros.closed_loop)."""
