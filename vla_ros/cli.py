"""The `vla-ros` command-line tool."""
import argparse
import sys


def main(argv=None) -> int:
    """Parse the command line and run one subcommand."""
    parser = argparse.ArgumentParser(prog="vla-ros", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="show the environment: ROS distro, devices, interfaces")
    args = parser.parse_args(argv)
    if args.version:
        from vla_ros import __version__
        print(__version__)
        return 0
    if args.command == "info":
        return _info()
    parser.print_help()
    return 0


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
