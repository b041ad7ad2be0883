"""Where a query node learns which executors exist: a membership source.

A source answers one question, `members()`: the executor URLs that should be in the ring now. The query
node's membership (appliance/routing/membership.py) asks it every `membership_poll_seconds` (a members
file: at every health probe, since a look is one stat) and turns the
difference into joins (after the newcomer is ready and prewarmed) and leaves (at once, so the leaver can be
drained). Three sources, chosen by the settings (`source_of`):

- `StaticSource`: `executor_urls`, fixed for the life of the process (Ansible-managed hosts, tests);
- `MembersFile`: a JSON list of URLs in a file, read again whenever its modification time, size or inode
  changes; `appliance up` (appliance/fleet.py) rewrites it atomically (`write_members`) when it starts or
  stops an executor;
- `AutoScalingGroup`: the InService instances of an EC2 autoscaling group (boto3: `autoscaling`
  DescribeAutoScalingGroups, then `ec2` DescribeInstances for their private addresses), each
  `http://<private ip>:<executor_asg_port>`. An instance a lifecycle hook holds in `Terminating:Wait`
  is no longer InService, so it leaves the ring before its drain agent drains it.

A source that cannot answer (a file being replaced badly, the AWS API throttling) raises SourceUnavailable;
the membership keeps the ring it has and asks again next time, so a hiccup never empties the ring.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from appliance.config import Settings

log = logging.getLogger("appliance.routing")


class SourceUnavailable(RuntimeError):
    """The source could not say who the members are this time; keep the ring as it is."""


class MembershipSource(Protocol):
    dynamic: bool  # False: members() never changes, so nobody needs to ask again
    cheap: bool  # True: a look costs next to nothing (a stat), so it is taken at every health probe

    def members(self) -> list[str]:
        """The executor URLs that should be in the ring, normalised and sorted. Raises SourceUnavailable."""
        ...

    def describe(self) -> str: ...


def normalise(urls: Iterable[str]) -> list[str]:
    """Sorted, distinct, without trailing slashes; every one an http(s) URL (ValueError otherwise)."""
    out = set()
    for url in urls:
        if not isinstance(url, str) or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"an executor URL must be an http:// or https:// URL, not {url!r}")
        out.add(url.strip().rstrip("/"))
    return sorted(out)


class StaticSource:
    dynamic = False
    cheap = True

    def __init__(self, urls: Iterable[str]) -> None:
        self._urls = normalise(urls)

    def members(self) -> list[str]:
        return list(self._urls)

    def describe(self) -> str:
        return f"static list of {len(self._urls)}"


class MembersFile:
    """A JSON list of executor URLs in a file, read again only when the file changed (stat per look)."""

    dynamic = True
    cheap = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._urls: list[str] = []

    def members(self) -> list[str]:
        try:
            st = self.path.stat()
        except FileNotFoundError as exc:
            raise SourceUnavailable(f"members file {self.path} does not exist") from exc
        except OSError as exc:
            raise SourceUnavailable(f"members file {self.path}: {exc}") from exc
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._seen:
            try:
                doc = json.loads(self.path.read_bytes())
                urls = normalise(doc if isinstance(doc, list) else _not_a_list(doc))
            except (OSError, ValueError) as exc:
                raise SourceUnavailable(f"members file {self.path}: {exc}") from exc
            self._urls, self._seen = urls, stamp
        return list(self._urls)

    def describe(self) -> str:
        return f"members file {self.path}"


def _not_a_list(doc: Any) -> list[str]:
    raise ValueError(f"expected a JSON list of executor URLs, got {type(doc).__name__}")


def write_members(path: str | Path, urls: Iterable[str]) -> None:
    """Replace the members file atomically (a temporary file in the same folder, fsynced, renamed), so a
    reader sees the old list or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(normalise(urls), indent=1).encode() + b"\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class AutoScalingGroup:
    """The InService instances of an EC2 autoscaling group, by private IP address.

    boto3 clients come from the standard AWS environment (region, credentials, and `AWS_ENDPOINT_URL` for
    a stand-in such as moto's server); `clients` replaces that in tests."""

    dynamic = True
    cheap = False

    def __init__(self, name: str, port: int, clients: Callable[[str], Any] | None = None) -> None:
        self.name = name
        self.port = port
        self._clients = clients or _boto3_client
        self._autoscaling: Any = None
        self._ec2: Any = None

    def members(self) -> list[str]:
        import botocore.exceptions

        try:
            if self._autoscaling is None:
                self._autoscaling, self._ec2 = self._clients("autoscaling"), self._clients("ec2")
            groups = self._autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[self.name])
            found = groups.get("AutoScalingGroups", [])
            if not found:
                raise SourceUnavailable(f"autoscaling group {self.name!r} does not exist")
            ids = sorted(i["InstanceId"] for i in found[0].get("Instances", [])
                         if i.get("LifecycleState") == "InService")
            addresses = []
            if ids:
                pages = self._ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
                addresses = [inst["PrivateIpAddress"] for page in pages for r in page.get("Reservations", [])
                             for inst in r.get("Instances", []) if inst.get("PrivateIpAddress")]
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise SourceUnavailable(f"autoscaling group {self.name!r}: {exc}") from exc
        return normalise(f"http://{_host(ip)}:{self.port}" for ip in addresses)

    def describe(self) -> str:
        return f"autoscaling group {self.name} (port {self.port})"


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def _boto3_client(service: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(service, config=Config(retries={"max_attempts": 3, "mode": "standard"},
                                               connect_timeout=5, read_timeout=10))


def source_of(settings: Settings) -> MembershipSource:
    """The source the settings name: the members file, else the autoscaling group, else `executor_urls`.
    Naming both a file and a group is refused: which one is right cannot be guessed."""
    if settings.executor_members_file and settings.executor_asg:
        raise ValueError("set executor_members_file or executor_asg, not both")
    if settings.executor_members_file:
        return MembersFile(settings.executor_members_file)
    if settings.executor_asg:
        return AutoScalingGroup(settings.executor_asg, settings.executor_asg_port)
    if not settings.executor_url_list:
        raise ValueError("no executors configured: set executor_urls, executor_members_file or executor_asg")
    return StaticSource(settings.executor_url_list)
