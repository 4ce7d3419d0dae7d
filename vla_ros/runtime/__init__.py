"""Runtime layers between the policy and the ROS node, no ROS imports: the control state machine,
chunk queue, safety and watchdog are pure Python / numpy; the inference engine, policy server and
loader run torch models."""
