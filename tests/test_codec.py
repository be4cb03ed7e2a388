from common import codec
from common.durations import format_duration, parse_duration
from common.model import Cluster, ManagerStatus, Node, NodeSpec, Service

import msgpack
import pytest


def test_round_trip_nested():
    n = Node(id="x", spec=NodeSpec(labels={"a": "b"}), manager_status=ManagerStatus("1.2.3.4:2378"))
    assert codec.from_plain(Node, codec.unpack(codec.pack(n))) == n


def test_unknown_fields_are_ignored_and_missing_take_defaults():
    plain = codec.to_plain(Node(id="x"))
    plain["from_the_future"] = {"deep": 1}
    plain["spec"]["new_knob"] = True
    del plain["status"]
    n = codec.from_plain(Node, plain)
    assert n.id == "x" and n.status.state == "unknown"


def test_a_list_or_object_field_refuses_other_shapes_and_names_the_path():
    # A str would iterate into characters ("sleep 9" -> ["s", "l", ...]) and a dict into keys.
    plain = {"id": "s", "spec": {"name": "web", "task_template": {"container": {
        "image": "busybox:1", "args": "sleep 9"}}}}
    with pytest.raises(TypeError, match="^spec: task_template: container: args: expected a "
                                        "list, got str$"):
        codec.from_plain(Service, plain)
    with pytest.raises(TypeError, match="^spec: labels: expected an object, got list$"):
        codec.from_plain(Node, {"id": "x", "spec": {"labels": ["a=b"]}})


def test_newer_format_version_still_reads():
    data = msgpack.packb({"v": 99, "d": {"id": "x"}, "extra": 1})
    assert codec.from_plain(Node, codec.unpack(data)).id == "x"


def test_not_a_message():
    with pytest.raises(ValueError):
        codec.unpack(msgpack.packb([1, 2]))


def test_bytes_survive():
    c = Cluster(id="c")
    c.root_ca.cert_pem = b"\x00pem"
    assert codec.from_plain(Cluster, codec.unpack(codec.pack(c))).root_ca.cert_pem == b"\x00pem"


def test_clone_is_deep():
    s = Service(id="s")
    t = codec.clone(s)
    t.spec.labels["x"] = "y"
    assert s.spec.labels == {}


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("5s", 5), ("1m30s", 90), ("2h", 7200),
                                          ("90d", 90 * 86400), ("3", 3)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "s", "1m 2s", "-1s"])
def test_bad_durations_say_how(bad):
    with pytest.raises(ValueError, match="like 500ms"):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(5) == "5s" and format_duration(7776000) == "90d" and format_duration(0.5) == "500ms"
