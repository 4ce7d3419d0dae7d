"""The `vla-ros` command-line tool."""
import argparse
import sys


def main(argv=None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="vla-ros", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="show the environment: ROS distro, devices, interfaces")
    rec = sub.add_parser("record", help="record topics into a rosbag2 bag (recorder_node)",
                         epilog="Extra ROS arguments go after --ros-args (e.g. -r __ns:=/robot1, "
                                "-p use_sim_time:=true).")
    rec.add_argument("--topics", nargs="+", required=True, metavar="TOPIC", help="topics to record")
    rec.add_argument("--output-dir", "-o", default=".", help="directory the bag is created in (default: .)")
    rec.add_argument("--bag-name", default="", help="bag directory name (default: rosbag2_<date>-<time>)")
    rec.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="storage format")
    rec.add_argument("--status-period", type=float, default=0.0,
                     help="seconds between message-count lines (default: off)")
    rep = sub.add_parser("replay", help="play a rosbag2 bag into the graph (player_node)",
                         epilog="Extra ROS arguments go after --ros-args (e.g. -r /a:=/b).")
    rep.add_argument("bag", help="bag directory (MCAP or sqlite3)")
    rep.add_argument("--rate", type=float, default=1.0, help="playback speed factor (default: 1.0)")
    rep.add_argument("--start-offset", type=float, default=0.0, help="seconds into the bag to start at")
    rep.add_argument("--loop", action="store_true", help="play again and again until Ctrl-C")
    rep.add_argument("--topics", nargs="+", default=[], metavar="TOPIC", help="topics to play (default: all)")
    rep.add_argument("--clock", action="store_true", help="publish /clock from the bag time")
    rep.add_argument("--wait-for-subscribers", type=int, default=0, metavar="N",
                     help="wait until every topic has N subscribers before starting")
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args = []
    if "--ros-args" in argv:
        i = argv.index("--ros-args")
        argv, ros_args = argv[:i], argv[i:]
    args = parser.parse_args(argv)
    if args.version:
        from vla_ros import __version__
        print(__version__)
        return 0
    if args.command == "info":
        return _info()
    if args.command == "record":
        return _record(args, ros_args)
    if args.command == "replay":
        return _replay(args, ros_args)
    parser.print_help()
    return 0


def _record(args, ros_args) -> int:
    from rclpy.parameter import Parameter

    from vla_ros.ros import recorder_node
    params = [Parameter("topics", Parameter.Type.STRING_ARRAY, list(args.topics)),
              Parameter("output_dir", Parameter.Type.STRING, args.output_dir),
              Parameter("bag_name", Parameter.Type.STRING, args.bag_name),
              Parameter("storage", Parameter.Type.STRING, args.storage),
              Parameter("status_period", Parameter.Type.DOUBLE, args.status_period)]
    return recorder_node.main(["vla-ros", *ros_args], parameter_overrides=params)


def _replay(args, ros_args) -> int:
    from rclpy.parameter import Parameter

    from vla_ros.ros import player_node
    params = [Parameter("bag", Parameter.Type.STRING, args.bag),
              Parameter("rate", Parameter.Type.DOUBLE, args.rate),
              Parameter("start_offset", Parameter.Type.DOUBLE, args.start_offset),
              Parameter("loop", Parameter.Type.BOOL, args.loop),
              Parameter("publish_clock", Parameter.Type.BOOL, args.clock),
              Parameter("wait_for_subscribers", Parameter.Type.INTEGER, args.wait_for_subscribers)]
    if args.topics:
        params.append(Parameter("topics", Parameter.Type.STRING_ARRAY, list(args.topics)))
    return player_node.main(["vla-ros", *ros_args], parameter_overrides=params)


def _info() -> int:
    import importlib
    import os
    for mod in ("rclpy", "torch", "cv2", "numpy", "vla_ros.msg", "control_msgs.action"):
        try:
            m = importlib.import_module(mod)
            print(f"{mod:22s} {getattr(m, '__version__', 'ok')}")
        except ImportError as exc:
            print(f"{mod:22s} missing ({exc})")
    for var in ("ROS_DISTRO", "ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "RMW_IMPLEMENTATION",
                "FASTDDS_DEFAULT_PROFILES_FILE"):
        print(f"{var:30s} {os.environ.get(var, '')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
