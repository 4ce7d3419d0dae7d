"""Recorded robot data without ROS (no rclpy).

Bags: bags.py (rosbag2 MCAP / sqlite3 read and write), bag_storage.py, bag_queue.py,
bag_reindex.py; collect.py records expert demonstrations in the simulator.

Episodes from bags, bottom-up: errors -> actions (where actions come from) -> config
(DatasetConfig) -> episode (Episode, .npz) -> episode_messages (read one bag) ->
alignment (one bag -> Episode) -> episodes (find, cache, load many, split) ->
torch_dataset (batches, statistics); compatibility (episodes vs a model config) and
cli (dataset command-line options) beside them.

LeRobotDataset v3.0: lerobot (layout, the YAML mapping of topics to features, statistics) ->
lerobot_reader (a dataset -> Episodes, used by episodes) and lerobot_writer (bags -> a dataset,
`vla-ros export`).
"""
