"""Recorded robot data: rosbag2 bags (MCAP or sqlite3) read and written without ROS (no rclpy)."""
