"""Camera images as numpy arrays: decoding ``sensor_msgs/Image`` / ``CompressedImage`` fields
(decode.py) and resize + center crop to the model's input (preprocess.py).

The bottom layer: numpy and OpenCV only, no torch and no ROS, so the ROS nodes, the data
tools and the model all import it.
"""
