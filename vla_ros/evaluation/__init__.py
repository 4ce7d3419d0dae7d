"""Policy evaluation without a robot: open-loop comparison with recorded episodes (open_loop)."""
