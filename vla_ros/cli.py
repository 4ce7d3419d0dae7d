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
    rep.add_argument("--start-paused", action="store_true",
                     help="wait for a call of /player_node/resume (std_srvs/Trigger) before playing, "
                          "like ros2 bag play --start-paused")
    bag = sub.add_parser("bag", help="inspect or repair a rosbag2 bag (no ROS needed)")
    bag_sub = bag.add_subparsers(dest="bag_command", required=True)
    bag_info = bag_sub.add_parser("info", help="what `ros2 bag info` prints: files, size, storage, distro, "
                                  "duration, start/end, counts per topic (and any metadata disagreement)")
    bag_info.add_argument("bag", help="bag directory, storage file or bare .mcap/.db3 file")
    bag_reindex = bag_sub.add_parser("reindex", help="recover a bag whose recorder was killed: rebuild the MCAP "
                                     "summary from its complete chunks (or fold sqlite3's WAL in) and metadata.yaml")
    bag_reindex.add_argument("bag", help="bag directory")
    col = sub.add_parser("collect", help="record scripted-expert demonstrations in the simulated Panda "
                         "(one MCAP bag per episode)")
    ev = sub.add_parser("eval", help="closed-loop evaluation: sim_robot_node + policy_node in their own "
                        "processes, success rate per task over seeded episodes")
    ev.add_argument("--checkpoint", required=True, help="policy checkpoint directory")
    ev.add_argument("--episodes", type=int, default=50,
                    help="episodes per task family, with --probe scenes per family (default 50)")
    ev.add_argument("--families", nargs="+", default=["touch", "push", "pick"],
                    help="task families (default touch push pick)")
    ev.add_argument("--phrasing", choices=("train", "heldout", "newwords"), default="train",
                    help="instruction phrasings: those of training, held-out sentence frames, or new-words "
                         "(verbs, nouns, direction words and sentence shapes absent from training) (default train)")
    ev.add_argument("--probe", action="store_true",
                    help="listening probe: every scene once per object named (touch, pick) or per push direction; "
                         "a scene counts when all its variants succeed (probe.json in --out)")
    ev.add_argument("--seed", type=int, default=100_000,
                    help="episode i uses scene seed SEED + i (default 100000; collection uses 1000 + i)")
    ev.add_argument("--timeout", type=float, default=12.0, help="simulated seconds per episode (default 12)")
    ev.add_argument("--real-time-factor", type=float, default=1.0, help="simulation speed (default 1.0)")
    ev.add_argument("--params-file", default=None, help="policy node parameters (default config/robots/sim_panda.yaml)")
    ev.add_argument("--out", "-o", default="eval_closed_loop", help="output directory: report.json, logs/, contact sheets")
    ev.add_argument("--contact-sheets", action="store_true", help="save a contact sheet PNG of each episode's frames")
    ev.add_argument("--json", default=None, help="also copy the report to this file")
    ev.add_argument("--server", default="", help="run the policy node against this remote policy server "
                    "(ws://host:port, e.g. vla-ros serve) instead of loading --checkpoint itself")
    ev.add_argument("--server-mapping", default="vla_ros", help="with --server: config/remote/<name>.yaml or a file")
    ev.add_argument("--emulated-latency", type=float, default=0.0, metavar="S",
                    help="what-if: add S seconds to every inference in the policy server process "
                         "(model.emulated_latency), e.g. 0.5 to see the robot with pi0 served over a network")
    ev.add_argument("--emulated-latency-p99", type=float, default=0.0, metavar="S",
                    help="with --emulated-latency: lognormal delays with that median and this 99th percentile")
    ev.add_argument("--execution", choices=("realtime", "ensemble", "latest"), default=None,
                    help="the policy node's control.execution (default: the parameters file's, realtime)")
    ev.add_argument("--motion", action="store_true",
                    help="record the end-effector path and commands: jerk and command jumps per episode")
    serve = sub.add_parser("serve", help="serve a checkpoint over openpi's websocket protocol (WebsocketClientPolicy "
                           "and policy_node's model.server work against it)")
    from vla_ros.runtime.remote_server import add_serve_arguments
    add_serve_arguments(serve)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Training and evaluation import torch (seconds): their options load only when used.
    train_p = sub.add_parser("train", help="train a policy by behaviour cloning on episode bags or LeRobot datasets")
    eval_p = sub.add_parser("eval-open-loop", help="compare a checkpoint's predicted action chunks with "
                            "recorded episodes (errors, plots)")
    exp = sub.add_parser("export", help="export episode bags as a dataset other tools read (LeRobotDataset v3.0)")
    exp.add_argument("--format", choices=("lerobot",), default="lerobot", help="dataset format (default lerobot)")
    exp.add_argument("--data", nargs="+", required=True, metavar="BAG_OR_DIR",
                     help="episode bag directories, directories of bags, or quoted patterns ('bags/episode_00*')")
    exp.add_argument("--out", "-o", required=True, help="new dataset directory (must not exist, or be empty)")
    exp.add_argument("--mapping", default="sim_panda",
                     help="which topics become which features: config/lerobot/<name>.yaml or a YAML file "
                          "(default sim_panda)")
    exp.add_argument("--include-failed", action="store_true", help="also export unsuccessful episodes")
    exp.add_argument("--no-progress", action="store_true", help="no progress bar")
    dst = sub.add_parser("distill", help="train a small student policy to imitate a trained teacher on episode bags")
    mrg = sub.add_parser("merge", help="fold a LoRA-adapted checkpoint's adapters into its base: a plain "
                         "checkpoint for deployment")
    mrg.add_argument("--checkpoint", required=True, help="adapted checkpoint directory (holds adapter_config.json)")
    mrg.add_argument("--out", required=True, help="directory of the plain checkpoint to write")
    mrg.add_argument("--base", default=None,
                     help="base checkpoint directory (default: the path adapter_config.json records); its sha256 "
                          "must match the recorded one")
    if "collect" in argv:  # its options are CollectConfig's fields (vla_ros.data.collect imports rosbags)
        _add_collect_arguments(col)
    if "train" in argv:
        from vla_ros.training.cli import add_train_arguments
        add_train_arguments(train_p)
    if "distill" in argv:
        from vla_ros.training.distill import add_distill_arguments
        add_distill_arguments(dst)
    if "eval-open-loop" in argv:
        from vla_ros.evaluation.open_loop import add_open_loop_arguments
        add_open_loop_arguments(eval_p)
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
    if args.command == "bag":
        return _bag(args)
    if args.command == "collect":
        return _collect(args)
    if args.command == "eval":
        return _eval(args)
    if args.command == "export":
        return _export(args)
    if args.command == "distill":
        from vla_ros.training.distill import run_distill_cli
        return run_distill_cli(args)
    if args.command == "merge":
        return _merge(args)
    if args.command == "serve":
        from vla_ros.runtime.remote_server import run_serve_cli
        return run_serve_cli(args)
    if args.command == "train":
        from vla_ros.training.cli import run_train_cli
        return run_train_cli(args)
    if args.command == "eval-open-loop":
        from vla_ros.evaluation.open_loop import run_open_loop_cli
        return run_open_loop_cli(args)
    parser.print_help()
    return 0


def _merge(args) -> int:
    """`vla-ros merge`: adapters folded into the base weights (peft merge_and_unload), saved plain."""
    import shutil
    from pathlib import Path

    from vla_ros.model.checkpoint import CheckpointError
    from vla_ros.model.lora import is_adapted_checkpoint, merge_checkpoint

    if not is_adapted_checkpoint(args.checkpoint):
        print(f"vla-ros merge: error: {args.checkpoint!r} is not an adapted checkpoint (no adapter_config.json)")
        return 1
    try:
        out = merge_checkpoint(args.checkpoint, args.out, args.base)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"vla-ros merge: error: {e}")
        return 1
    dataset_config = Path(args.checkpoint, "dataset_config.json")
    if dataset_config.is_file():  # the topics and sizes it was trained on travel with it
        shutil.copy(dataset_config, out / dataset_config.name)
    print(f"merged {args.checkpoint} into a plain checkpoint: {out}")
    return 0


def _export(args) -> int:
    """vla-ros export: 0 on success, 1 with one error line on bad input."""
    from vla_ros.data.errors import DatasetError
    from vla_ros.data.lerobot_writer import export_lerobot
    try:
        export_lerobot(args.data, args.out, mapping=args.mapping, include_failed=args.include_failed,
                       progress=not args.no_progress)
    except DatasetError as exc:
        print(f"vla-ros export: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _bag(args) -> int:
    """vla-ros bag info|reindex: 0 on success, 2 on a bag that cannot be read or recovered."""
    from vla_ros.data.bags import BagError, BagReader, format_info
    try:
        if args.bag_command == "reindex":
            from vla_ros.data.bag_reindex import reindex
            for line in reindex(args.bag).lines():
                print(line)
            return 0
        with BagReader(args.bag, log_warnings=False) as reader:
            print(format_info(reader))
            for warning in reader.warnings:
                print(f"warning: {warning}", file=sys.stderr)
        return 0
    except BagError as exc:
        print(f"[vla-ros bag {args.bag_command}] {exc}", file=sys.stderr)
        return 2


_COLLECT_FIELDS = ("episodes", "families", "seed", "noise", "open_start", "gripper_flip", "workers", "control_rate",
                   "image_size", "max_ticks", "keep_failed", "storage")


def _add_collect_arguments(col) -> None:
    from vla_ros.cli_fields import add_field_option
    from vla_ros.data.collect import CollectConfig
    add_field_option(col, CollectConfig, "out_dir", "--out", "-o", dest="out_dir", required=True)
    for name in _COLLECT_FIELDS:
        kwargs = {"families": dict(nargs="+", metavar="FAMILY"), "keep_failed": dict(action="store_true"),
                  "storage": dict(choices=("mcap", "sqlite3"))}.get(name, {})
        add_field_option(col, CollectConfig, name, **kwargs)


def _collect(args) -> int:
    from vla_ros.data.collect import CollectConfig, collect
    given = {name: getattr(args, name) for name in _COLLECT_FIELDS if getattr(args, name) not in (None, False)}
    if "families" in given:
        given["families"] = tuple(given["families"])
    collect(CollectConfig(out_dir=args.out_dir, **given))
    return 0


def _eval(args) -> int:
    import json
    from pathlib import Path

    from vla_ros.evaluation.closed_loop import format_probe_table, format_table
    from vla_ros.ros.closed_loop import evaluate, probe
    run, count = (probe, "scenes") if args.probe else (evaluate, "episodes")
    extra = {}
    if args.emulated_latency:
        extra["model.emulated_latency"] = args.emulated_latency
        extra["model.emulated_latency_p99"] = args.emulated_latency_p99
        # The node would hold the arm on a request slower than control.inference_timeout (2 s by default).
        extra["control.inference_timeout"] = max(2.0, 2.0 * max(args.emulated_latency, args.emulated_latency_p99))
    if args.execution:
        extra["control.execution"] = args.execution
    report = run(args.checkpoint, families=tuple(args.families), seed=args.seed, phrasing=args.phrasing,
                 timeout=args.timeout, real_time_factor=args.real_time_factor, params_file=args.params_file,
                 out_dir=args.out, contact_sheets=args.contact_sheets, server=args.server,
                 server_mapping=args.server_mapping, **{count: args.episodes},
                 log=lambda line: print(line, flush=True),  # progress shows at once through pipes too
                 policy_params=extra, **({} if args.probe else {"motion": args.motion}))
    print()
    print((format_probe_table if args.probe else format_table)(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
        print(f"report written to {args.json}")
    return 0


def _record(args, ros_args) -> int:
    from vla_ros.ros import recorder_node
    return recorder_node.main(["vla-ros", *ros_args], {
        "topics": list(args.topics), "output_dir": args.output_dir, "bag_name": args.bag_name,
        "storage": args.storage, "status_period": args.status_period})


def _replay(args, ros_args) -> int:
    from vla_ros.ros import player_node
    values = {"bag": args.bag, "rate": args.rate, "start_offset": args.start_offset, "loop": args.loop,
              "publish_clock": args.clock, "wait_for_subscribers": args.wait_for_subscribers,
              "start_paused": args.start_paused}
    if args.topics:
        values["topics"] = list(args.topics)
    return player_node.main(["vla-ros", *ros_args], values)


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
