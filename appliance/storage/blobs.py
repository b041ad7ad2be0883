"""Small immutable objects beside the tables (keys, and later index objects)."""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from appliance.storage.root import StorageRoot
from appliance.storage.s3 import s3_put_if_absent


class BlobStore:
    """Whole-object reads and writes under `<root>/<prefix>`.

    A write is all-or-nothing: locally it goes to a temporary name and is renamed into place; object
    stores publish a PUT atomically by themselves. Readers therefore never see half an object.
    """

    def __init__(self, root: StorageRoot, prefix: str = "_appliance") -> None:
        self._root = root
        self._fs, base = root.filesystem()
        self._base = f"{base}/{prefix}"
        self._local = root.is_local

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid blob key {key!r}")
        return f"{self._base}/{key}"

    def get(self, key: str) -> bytes | None:
        try:
            with self._fs.open_input_stream(self._path(key)) as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if not self._local:
            with self._fs.open_output_stream(path) as fh:
                fh.write(data)
            return
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        """Create `key` only if nothing is there yet; False (and nothing written) when it exists.

        What makes publication safe between two writers: locally a hard link (atomic, fails on an existing
        name); on S3 a conditional PUT (`If-None-Match: *`). Other object stores fall back to check-then-put,
        which is only as safe as the single writer per table the indexer's lease already ensures.
        """
        path = self._path(key)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if self._local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self._root.scheme in ("s3", "s3a"):
            bucket, _, object_key = path.partition("/")
            return s3_put_if_absent(self._root, bucket, object_key, data)
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def exists(self, key: str) -> bool:
        return self._fs.get_file_info(self._path(key)).type != pafs.FileType.NotFound

    def list(self, prefix: str) -> list[str]:
        """Keys under `prefix/`, relative to this store, sorted."""
        base = self._path(prefix)
        infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        start = len(self._base) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.File and ".tmp-" not in i.path)

    def list_times(self, prefix: str) -> dict[str, float]:
        """Keys under `prefix/` with their modification times (epoch seconds): what cleanup needs to tell
        an abandoned object from one a build is still writing."""
        base = self._path(prefix)
        infos = self._fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        start = len(self._base) + 1
        return {i.path[start:]: i.mtime.timestamp() for i in infos
                if i.type == pafs.FileType.File and ".tmp-" not in i.path and i.mtime is not None}

    def delete(self, key: str) -> None:
        try:
            self._fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix)
        if self._fs.get_file_info(path).type != pafs.FileType.NotFound:
            self._fs.delete_dir(path)
