"""Any installed type can be recorded, with the type hash its publishers advertise: types using
`char` (std_msgs/Char; service events through service_msgs/ServiceEventInfo), service event
topics, action feedback and status topics, and types with `wstring`."""
import signal

from action_msgs.msg import GoalStatus, GoalStatusArray
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from ruamel.yaml import YAML
from std_msgs.msg import Char
from std_srvs.srv import Trigger
from test_msgs.msg import WStrings

from ros_testing import RosProcess, executable, spinning_node, wait_for
from vla_ros.action import ExecuteInstruction
from vla_ros.data.bags import BagReader, BagWriter, read_bag

N = 5
FEEDBACK = ExecuteInstruction.Impl.FeedbackMessage
TOPICS = {
    "/char": (Char, lambda i: Char(data=65 + i)),
    "/trigger/_service_event": (Trigger.Event, lambda i: Trigger.Event(
        request=[Trigger.Request()], response=[Trigger.Response(success=True, message=f"r{i}")])),
    "/execute/_action/feedback": (FEEDBACK, lambda i: FEEDBACK(feedback=ExecuteInstruction.Feedback(steps=i))),
    "/execute/_action/status": (GoalStatusArray, lambda i: GoalStatusArray(
        status_list=[GoalStatus(status=GoalStatus.STATUS_EXECUTING)] * (i + 1))),
    "/wstrings": (WStrings, lambda i: WStrings(wstring_value=f"wörld {i}", array_of_wstrings=["ハ", "b", "c"])),
}


def test_recorder_records_service_event_action_char_and_wstring_topics_with_publisher_hashes(tmp_path):
    with spinning_node("types_publisher") as n:
        pubs = {t: n.node.create_publisher(cls, t, QoSProfile(depth=50)) for t, (cls, _) in TOPICS.items()}
        advertised = {t: str(n.node.get_publishers_info_by_topic(t)[0].topic_type_hash) for t in TOPICS}
        rec = RosProcess(executable("recorder_node", "--ros-args", "-p", f"topics:=[{', '.join(TOPICS)}]",
                                    "-p", f"output_dir:={tmp_path}", "-p", "bag_name:=types",
                                    "-p", "status_period:=0.1"), tmp_path / "recorder.log")
        try:
            for topic, pub in pubs.items():
                wait_for(lambda t=topic: f"recording {t} (" in rec.output(), what=f"recorder on {topic}", process=rec)
                wait_for(lambda p=pub: p.get_subscription_count() >= 1, what=f"match on {topic}", process=rec)
            for i in range(N):
                for topic, (_, make) in TOPICS.items():
                    pubs[topic].publish(make(i))
            want = "recorded: " + ", ".join(f"{t} {N}" for t in TOPICS)
            wait_for(lambda: want in rec.output(), what=want, process=rec)
        finally:
            rc = rec.stop(signal.SIGINT)
    log = rec.output()
    assert rc == 0, log
    assert "cannot record" not in log and "differs" not in log, log
    bag = tmp_path / "types"
    meta = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    hashes = {t["topic_metadata"]["name"]: t["topic_metadata"]["type_description_hash"]
              for t in meta["topics_with_message_count"]}
    assert hashes == advertised
    assert all(h.startswith("RIHS01_") for h in hashes.values())
    with BagReader(bag) as r:
        assert {t: info.count for t, info in r.topics.items()} == {t: N for t in TOPICS}
        assert {t: info.type_hash for t, info in r.topics.items()} == advertised
    for topic, (cls, make) in TOPICS.items():
        assert [deserialize_message(m.data, cls) for m in read_bag(bag, [topic])] == [make(i) for i in range(N)]


def test_writer_schema_of_a_service_event_names_its_nested_types(tmp_path):
    with BagWriter(tmp_path / "ev") as bag:
        bag.add_topic("/trigger/_service_event", "std_srvs/srv/Trigger_Event")
    from mcap.reader import make_reader
    with open(tmp_path / "ev" / "ev.mcap", "rb") as f:
        schema = next(iter(make_reader(f).get_summary().schemas.values()))
    text = schema.data.decode()
    assert schema.name == "std_srvs/srv/Trigger_Event" and schema.encoding == "ros2msg"
    assert text.startswith("service_msgs/msg/ServiceEventInfo info\nstd_srvs/srv/Trigger_Request[<=1] request\n")
    assert "MSG: service_msgs/msg/ServiceEventInfo\nuint8 event_type\n" in text
    assert "MSG: std_srvs/srv/Trigger_Response\nbool success\nstring message\n" in text
