"""Pure parts of discovery: the backends file and EndpointSlices to targets."""

import pytest

from kvroute.control.discovery import DiscoveryError, Target, parse_backend_file, targets_from_slices


def test_backend_file_forms():
    assert parse_backend_file("- http://a:1\n- http://b:2/\n", "f") == {
        "http://a:1": Target("http://a:1"), "http://b:2": Target("http://b:2")}
    assert parse_backend_file('{"backends": [{"url": "http://a:1", "draining": true}]}', "f") == {
        "http://a:1": Target("http://a:1", draining=True)}
    assert parse_backend_file("", "f") == {}
    assert parse_backend_file("backends:\n", "f") == {}


@pytest.mark.parametrize("text, words", [
    ("servers: []\n", ["backends.yaml", "'servers'"]),
    ("- 42\n", ["backends.yaml", "backends[0]"]),
    ("- {url: http://a:1, weight: 2}\n", ["backends.yaml", "'weight'"]),
    ("- {url: http://a:1, draining: maybe}\n", ["backends.yaml", "draining"]),
    ("- ftp://a:1\n", ["backends.yaml", "http(s)"]),
    ("backends: {a: 1}\n", ["backends.yaml", "list"]),
    ("[unclosed\n", ["backends.yaml", "YAML"]),
])
def test_backend_file_errors_name_the_file(text, words):
    with pytest.raises(DiscoveryError) as info:
        parse_backend_file(text, "backends.yaml")
    for word in words:
        assert word in str(info.value)


def _slice(endpoints, ports=({"name": "http", "port": 8000},)):
    return {"metadata": {"name": "s"}, "ports": list(ports), "endpoints": endpoints}


def test_slices_ready_terminating_and_not_ready():
    slices = [_slice([
        {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.2"], "conditions": {"ready": False, "serving": True, "terminating": True}},
        {"addresses": ["10.0.0.3"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.4"]},  # no conditions: ready by the API's rule
        {"addresses": ["fd00::5"], "conditions": {"ready": True}},
        {"addresses": ["10.0.0.6"], "conditions": {"ready": False, "serving": False, "terminating": True}},
    ])]
    assert targets_from_slices(slices, "http", 9) == {
        "http://10.0.0.1:8000": Target("http://10.0.0.1:8000"),
        "http://10.0.0.2:8000": Target("http://10.0.0.2:8000", draining=True),
        "http://10.0.0.4:8000": Target("http://10.0.0.4:8000"),
        "http://[fd00::5]:8000": Target("http://[fd00::5]:8000"),
    }


def test_slices_port_selection():
    ports = ({"name": "metrics", "port": 9100}, {"name": "http", "port": 8000})
    ready = [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}]
    assert list(targets_from_slices([_slice(ready, ports)], "http", 1)) == ["http://10.0.0.1:8000"]
    assert list(targets_from_slices([_slice(ready, ports)], "", 1)) == ["http://10.0.0.1:9100"]
    assert targets_from_slices([_slice(ready, ports)], "grpc", 1) == {}
    assert list(targets_from_slices([_slice(ready, ())], "", 7)) == ["http://10.0.0.1:7"]


def test_address_ready_in_one_slice_is_not_draining():
    a = _slice([{"addresses": ["10.0.0.1"], "conditions": {"ready": False, "terminating": True}}])
    b = _slice([{"addresses": ["10.0.0.1"], "conditions": {"ready": True}}])
    assert targets_from_slices([a, b], "http", 1) == {"http://10.0.0.1:8000": Target("http://10.0.0.1:8000")}
    assert targets_from_slices([b, a], "http", 1) == {"http://10.0.0.1:8000": Target("http://10.0.0.1:8000")}
