"""Small immutable objects beside the tables (keys, and later index objects)."""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from appliance.storage.root import StorageRoot


class BlobStore:
    """Whole-object reads and writes under `<root>/<prefix>`.

    A write is all-or-nothing: locally it goes to a temporary name and is renamed into place; object
    stores publish a PUT atomically by themselves. Readers therefore never see half an object.
    """

    def __init__(self, root: StorageRoot, prefix: str = "_appliance") -> None:
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

    def exists(self, key: str) -> bool:
        return self._fs.get_file_info(self._path(key)).type != pafs.FileType.NotFound
