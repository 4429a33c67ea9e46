"""The driver-disk storage of cluster searches (recbole_cmi/tune/storage.py) and the --address check, without a
cluster: the file operations the actor runs, its confinement to the search's folder, and the one-line errors."""

from __future__ import annotations

import socket
import time

import pytest

from recbole_cmi.distributed import find_free_port
from recbole_cmi.errors import ConfigValueError, RecboleCmiError

pytest.importorskip("pyarrow")
from recbole_cmi.tune.storage import DiskServer, DriverDiskHandler  # noqa: E402


def test_the_server_reads_writes_and_lists_inside_its_root(tmp_path):
    root = tmp_path / "ray"
    root.mkdir()
    server = DiskServer(str(root))
    assert server.call("create_dir", str(root / "exp" / "trial"), True) == ("ok", None)
    assert server.call("write", str(root / "exp" / "trial" / "result.json"), b'{"epoch": 0}\n', False)[0] == "ok"
    assert server.call("write", str(root / "exp" / "trial" / "result.json"), b'{"epoch": 1}\n', True)[0] == "ok"
    assert server.call("read", str(root / "exp" / "trial" / "result.json")) == (
        "ok",
        b'{"epoch": 0}\n{"epoch": 1}\n',
    )
    status, listed = server.call("list", str(root / "exp"), True, False)
    assert status == "ok" and sorted(p for p, *_ in listed) == [
        str(root / "exp" / "trial"),
        str(root / "exp" / "trial" / "result.json"),
    ]
    assert server.call("move", str(root / "exp" / "trial"), str(root / "exp" / "moved"))[0] == "ok"
    assert (root / "exp" / "moved" / "result.json").is_file()
    assert server.call("read", str(root / "missing"))[:2] == ("error", "FileNotFoundError")


@pytest.mark.parametrize("operation, args", [("read", ("{outside}",)), ("write", ("{outside}", b"x", False)),
                                             ("delete_dir", ("{parent}",)), ("read", ("{root}/../secret",))])  # fmt: skip
def test_the_server_refuses_paths_outside_its_root(tmp_path, operation, args):
    root = tmp_path / "ray"
    root.mkdir()
    (tmp_path / "secret").write_text("not for trials")
    names = {"outside": str(tmp_path / "secret"), "parent": str(tmp_path), "root": str(root)}
    answer = DiskServer(str(root)).call(operation, *(a.format(**names) if isinstance(a, str) else a for a in args))
    assert answer[:2] == ("error", "PermissionError") and "outside the search's storage folder" in answer[2]
    assert (tmp_path / "secret").read_text() == "not for trials"


def test_the_handler_pickles_by_name_so_a_resumed_search_can_read_its_state():
    import pickle

    handler = DriverDiskHandler("/some/output/ray", "storage-abc")
    handler._server = object()  # a live actor handle in the driver; never pickled
    copy = pickle.loads(pickle.dumps(handler))
    assert (copy.root, copy.actor_name, copy._server) == ("/some/output/ray", "storage-abc", None)
    assert copy == handler


def test_an_address_where_nothing_listens_fails_at_once():
    from recbole_cmi.tune.cluster import check_cluster_answers

    address = f"127.0.0.1:{find_free_port()}"
    start = time.monotonic()
    with pytest.raises(RecboleCmiError, match=rf"no Ray cluster answers at {address} \(.*refused"):
        check_cluster_answers(address)
    assert time.monotonic() - start < 5
    with socket.socket() as listening:  # something listens: the check passes (Ray then does the handshake)
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        check_cluster_answers(f"127.0.0.1:{listening.getsockname()[1]}")


@pytest.mark.parametrize("address", ["ray://head:10001", "head", "head:port", ":6379"])
def test_a_malformed_address_is_a_config_error(address):
    from recbole_cmi.tune.cluster import check_cluster_answers

    with pytest.raises(ConfigValueError, match="--address must be auto or HOST:PORT"):
        check_cluster_answers(address)
