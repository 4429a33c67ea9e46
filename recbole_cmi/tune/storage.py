"""A search's storage on the driver's own disk, for trials running on any node of a Ray cluster.

Ray Tune writes each trial's results and checkpoints to ``RunConfig.storage_path``, from the node the trial runs
on, and (since Ray 2.7) copies nothing between nodes: a local path works on a multi-node cluster only if every
node mounts it (NFS), otherwise Ray asks for a cloud bucket. A search's ``--output`` folder, though, is on the
machine that runs ``run_hyper.py``. :func:`driver_disk_filesystem` makes that folder the storage of every node: a
pyarrow file system whose operations are carried out by a small Ray actor pinned to the driver's node, on that
node's disk, under one root folder. A trial on another node writes its checkpoints through it, over the cluster's
own connections, and they land in ``--output`` as with a local Ray; no shared file system or bucket is needed.

Files move whole (one actor call per file): RecBole checkpoints of the models here are megabytes, and a trial
writes one per validation.
"""

from __future__ import annotations

import io
import os

import pyarrow
from pyarrow import fs

from recbole_cmi.errors import RecboleCmiError

ACTOR_NAMESPACE = "recbole_cmi"

# Errors raised on the driver's node, raised again as themselves on the calling node (pyarrow maps them).
_ERRORS = {
    cls.__name__: cls
    for cls in (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError, OSError)
}


class DiskServer:
    """Runs on the driver's node (as a Ray actor): file operations confined to ``root``.

    Every method returns ``("ok", value)`` or ``("error", exception class name, message)``, so that the caller
    raises the built-in exception pyarrow expects rather than Ray's wrapper.
    """

    def __init__(self, root: str):
        self.root = os.path.realpath(root)
        self.local = fs.LocalFileSystem()

    def call(self, operation: str, *args):
        try:
            return "ok", getattr(self, f"_{operation}")(*args)
        except OSError as err:
            name = type(err).__name__ if type(err).__name__ in _ERRORS else "OSError"
            return "error", name, str(err)

    def _inside(self, path: str) -> str:
        real = os.path.realpath(path)
        if real != self.root and not real.startswith(self.root + os.sep):
            raise PermissionError(f"{path} is outside the search's storage folder {self.root}")
        return path

    @staticmethod
    def _plain(info) -> tuple:
        return info.path, int(info.type), info.size, info.mtime_ns

    def _info(self, paths: list[str]) -> list[tuple]:
        return [self._plain(info) for info in self.local.get_file_info([self._inside(p) for p in paths])]

    def _list(self, base_dir: str, recursive: bool, allow_not_found: bool) -> list[tuple]:
        selector = fs.FileSelector(self._inside(base_dir), allow_not_found=allow_not_found, recursive=recursive)
        return [self._plain(info) for info in self.local.get_file_info(selector)]

    def _create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(self._inside(path), recursive=recursive)

    def _delete_dir(self, path: str) -> None:
        self.local.delete_dir(self._inside(path))

    def _delete_dir_contents(self, path: str, missing_dir_ok: bool) -> None:
        self.local.delete_dir_contents(self._inside(path), missing_dir_ok=missing_dir_ok)

    def _delete_file(self, path: str) -> None:
        self.local.delete_file(self._inside(path))

    def _move(self, src: str, dest: str) -> None:
        self.local.move(self._inside(src), self._inside(dest))

    def _copy_file(self, src: str, dest: str) -> None:
        self.local.copy_file(self._inside(src), self._inside(dest))

    def _read(self, path: str) -> bytes:
        with open(self._inside(path), "rb") as f:
            return f.read()

    def _write(self, path: str, data: bytes, append: bool) -> None:
        with open(self._inside(path), "ab" if append else "wb") as f:
            f.write(data)


class DriverDiskHandler(fs.FileSystemHandler):
    """pyarrow's side of the storage: each operation is one call to the :class:`DiskServer` actor.

    It holds the actor's name, not its handle: Ray Tune pickles the storage into the experiment's state, and a
    resumed search (a new driver, a new actor under the same name) must be able to read that state back.
    """

    def __init__(self, root: str, actor_name: str):
        self.root = root
        self.actor_name = actor_name
        self._server = None

    def __reduce__(self):
        return DriverDiskHandler, (self.root, self.actor_name)

    def _call(self, operation, *args):
        import ray

        if self._server is None:
            self._server = ray.get_actor(self.actor_name, namespace=ACTOR_NAMESPACE)
        answer = ray.get(self._server.call.remote(operation, *args))
        if answer[0] == "error":
            raise _ERRORS[answer[1]](answer[2])
        return answer[1]

    @staticmethod
    def _info(plain):
        path, kind, size, mtime_ns = plain
        return fs.FileInfo(path, fs.FileType(kind), size=size, mtime_ns=mtime_ns)

    def __eq__(self, other):
        return isinstance(other, DriverDiskHandler) and (self.root, self.actor_name) == (other.root, other.actor_name)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "recbole_cmi+driver_disk"

    def normalize_path(self, path):
        return path

    def get_file_info(self, paths):
        return [self._info(p) for p in self._call("info", list(paths))]

    def get_file_info_selector(self, selector):
        infos = self._call("list", selector.base_dir, selector.recursive, selector.allow_not_found)
        return [self._info(p) for p in infos]

    def create_dir(self, path, recursive):
        self._call("create_dir", path, recursive)

    def delete_dir(self, path):
        self._call("delete_dir", path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self._call("delete_dir_contents", path, missing_dir_ok)

    def delete_root_dir_contents(self):
        raise PermissionError("the search's storage never deletes the whole root")

    def delete_file(self, path):
        self._call("delete_file", path)

    def move(self, src, dest):
        self._call("move", src, dest)

    def copy_file(self, src, dest):
        self._call("copy_file", src, dest)

    def open_input_stream(self, path):
        return pyarrow.BufferReader(self._call("read", path))

    def open_input_file(self, path):
        return self.open_input_stream(path)

    def open_output_stream(self, path, metadata):
        return pyarrow.PythonFile(_Upload(self, path, append=False), mode="w")

    def open_append_stream(self, path, metadata):
        return pyarrow.PythonFile(_Upload(self, path, append=True), mode="w")


class _Upload(io.BytesIO):
    """A file being written: kept in memory, sent to the driver's node whole when closed."""

    def __init__(self, handler, path: str, append: bool):
        super().__init__()
        self.handler, self.path, self.append = handler, path, append

    def close(self):
        if not self.closed:
            self.handler._call("write", self.path, self.getvalue(), self.append)
        super().close()


def driver_disk_filesystem(root: str, wait: float = 60.0):
    """A pyarrow file system for Ray Tune's ``storage_filesystem``: ``root`` on the driver's node, from any node.

    Call it on the driver after ``ray.init``. The actor takes no CPU (trials keep every CPU of the cluster), is
    named after ``root`` (one search writes into a folder at a time) and ends with the driver's job. The actor of
    a driver that was just killed may take a moment to go: its name is waited for, ``wait`` seconds at most.
    """
    import hashlib
    import time

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = os.path.realpath(root)
    os.makedirs(root, exist_ok=True)
    actor_name = "storage-" + hashlib.sha256(root.encode()).hexdigest()[:20]
    options = dict(
        name=actor_name,
        namespace=ACTOR_NAMESPACE,
        num_cpus=0,
        max_concurrency=8,  # several trials write at once; each operation touches its own files
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False),
    )
    deadline = time.monotonic() + wait
    while True:
        try:
            server = ray.remote(DiskServer).options(**options).remote(root)
            break
        except ValueError as err:  # the name is taken
            if time.monotonic() > deadline:
                raise RecboleCmiError(f"another search on this Ray cluster is writing into {root}") from err
            time.sleep(0.5)
    handler = DriverDiskHandler(root, actor_name)
    handler._server = server  # the name is registered asynchronously; this process needs no look-up
    return fs.PyFileSystem(handler)
