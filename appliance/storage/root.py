"""Where the storage root is and how to reach it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from appliance.errors import Unavailable


@dataclass(frozen=True)
class StorageRoot:
    """A storage root URI, normalised: local paths become absolute so every process agrees on them."""

    uri: str

    @classmethod
    def parse(cls, data: str) -> StorageRoot:
        parsed = urlparse(data)
        if parsed.scheme in ("", "file"):
            local = Path(parsed.path if parsed.scheme == "file" else data).expanduser().resolve()
            return cls(str(local))
        return cls(data.rstrip("/"))

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def join(self, *parts: str) -> str:
        return "/".join([self.uri, *parts])

    def filesystem(self) -> tuple[pafs.FileSystem, str]:
        """A pyarrow filesystem and the root's path inside it (for blobs and listings)."""
        if self.is_local:
            Path(self.uri).mkdir(parents=True, exist_ok=True)
            return pafs.LocalFileSystem(), self.uri
        return pafs.FileSystem.from_uri(self.uri)

    def check_reachable(self) -> None:
        """Raise Unavailable unless the root can be listed (the readiness probe)."""
        try:
            fs, path = self.filesystem()
            fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        except Exception as exc:  # any backend error means "cannot serve"
            raise Unavailable(f"storage root {self.uri} is not reachable", str(exc)) from exc
