"""Runtime layers between the policy and the ROS node (pure Python / numpy, no ROS imports)."""
