"""Membership sources (static list, members file, an autoscaling group on moto's server) and the query
node's ring swaps: a newcomer joins only once ready and prewarmed, a leaver leaves at once, a ring in use
never changes, and a prewarm is bounded in time. Executors here are small HTTP servers on loopback."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from conftest import free_port_block

from appliance.config import Settings
from appliance.planner.plan import FRAGMENT, Task, decode, encode
from appliance.query.dispatch import Dispatcher
from appliance.routing.membership import Membership
from appliance.routing.prewarm import PrewarmReport, RecentGroups
from appliance.routing.ring import HashRing
from appliance.routing.sources import (
    AutoScalingGroup,
    MembersFile,
    SourceUnavailable,
    StaticSource,
    source_of,
    write_members,
)

WAIT = 120.0


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(0.02)


class FakeExecutor:
    """An executor's control plane as far as membership sees it: /readyz answers `ready` (200 or 503, with
    `draining`), and a task batch over HTTP (no Flight port advertised) waits `delay` seconds, then answers
    500, or with `answer` the candidate (row id 7) of every query."""

    def __init__(self) -> None:
        self.ready = True
        self.draining = False
        self.answer = False
        self.delay = 0.0
        self.batches = 0
        self.wire: int | None = None  # the task batch form it advertises in /readyz (None: says nothing)
        self.header: dict = {}  # the last batch's header
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                doc = {"ready": owner.ready and not owner.draining, "draining": owner.draining}
                body = json.dumps(doc if owner.wire is None else {**doc, "wire": owner.wire}).encode()
                self.send_response(200 if owner.ready and not owner.draining else 503)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                header, (queries,) = decode(self.rfile.read(int(self.headers.get("content-length", 0))))
                owner.header = header
                owner.batches += 1
                time.sleep(owner.delay)
                if owner.answer:
                    shape = (len(queries), int(header["k"]))
                    body = encode({"tasks": 1}, [np.full(shape, 7, np.uint64), np.zeros(shape, np.float32)])
                    self.send_response(200)
                else:
                    body = b'{"code": "internal", "error": "fake"}'
                    self.send_response(500)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port_block(1)), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def executors() -> Iterator[list[FakeExecutor]]:
    made = [FakeExecutor() for _ in range(3)]
    yield made
    for e in made:
        e.close()


# ---- sources ----------------------------------------------------------------------------------------------


def test_static_source_normalises_and_never_changes() -> None:
    source = StaticSource(["http://b:1/", "http://a:1", "http://a:1"])
    assert source.members() == ["http://a:1", "http://b:1"] and not source.dynamic
    with pytest.raises(ValueError, match="http"):
        StaticSource(["b:1"])


def test_members_file_is_read_again_when_it_changes_and_a_bad_one_changes_nothing(tmp_path) -> None:
    path = tmp_path / "m" / "executors.json"
    source = MembersFile(path)
    with pytest.raises(SourceUnavailable, match="does not exist"):
        source.members()
    write_members(path, ["http://e:2", "http://e:1/"])
    assert json.loads(path.read_text()) == ["http://e:1", "http://e:2"]
    assert source.members() == ["http://e:1", "http://e:2"]
    write_members(path, ["http://e:3"])
    assert source.members() == ["http://e:3"]
    path.write_text('{"not": "a list"}')
    with pytest.raises(SourceUnavailable, match="JSON list"):
        source.members()
    path.write_text('["http://e:1", "e:2"]')
    with pytest.raises(SourceUnavailable, match="http"):
        source.members()
    assert [p.name for p in path.parent.iterdir()] == ["executors.json"]  # no temporary file left behind


def test_settings_choose_one_source(tmp_path) -> None:
    base = Settings.load(env={})
    assert isinstance(source_of(base.replace(executor_urls="http://a:1")), StaticSource)
    assert isinstance(source_of(base.replace(executor_urls="http://a:1", executor_members_file=str(tmp_path))),
                      MembersFile)
    asg = source_of(base.replace(executor_asg="execs", executor_asg_port=9000))
    assert isinstance(asg, AutoScalingGroup) and asg.port == 9000
    with pytest.raises(ValueError, match="not both"):
        source_of(base.replace(executor_members_file="f", executor_asg="g"))
    with pytest.raises(ValueError, match="no executors"):
        source_of(base)


@pytest.fixture
def moto_aws(monkeypatch) -> Iterator[str]:
    """moto's server (autoscaling + EC2) on loopback, reached through the standard AWS environment."""
    from moto.server import ThreadedMotoServer

    port = free_port_block(1)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    yield endpoint
    server.stop()


def test_autoscaling_group_source_lists_in_service_instances_by_private_ip(moto_aws) -> None:
    import boto3

    ec2, autoscaling = boto3.client("ec2"), boto3.client("autoscaling")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    ec2.create_launch_template(LaunchTemplateName="exec", LaunchTemplateData={
        "ImageId": "ami-12c6146b", "InstanceType": "t3.micro"})
    autoscaling.create_auto_scaling_group(
        AutoScalingGroupName="execs", LaunchTemplate={"LaunchTemplateName": "exec"}, MinSize=0, MaxSize=5,
        DesiredCapacity=2, VPCZoneIdentifier=subnet)

    def private_urls() -> list[str]:
        ids = [i["InstanceId"] for i in autoscaling.describe_auto_scaling_groups(
            AutoScalingGroupNames=["execs"])["AutoScalingGroups"][0]["Instances"]
            if i["LifecycleState"] == "InService"]
        found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        return sorted(f"http://{i['PrivateIpAddress']}:8181" for r in found for i in r["Instances"])

    source = AutoScalingGroup("execs", 8181)  # boto3 from the environment, as on a query node
    first = source.members()
    assert len(first) == 2 and first == private_urls()
    assert all(u.startswith("http://10.0.1.") for u in first)
    autoscaling.set_desired_capacity(AutoScalingGroupName="execs", DesiredCapacity=3)
    assert len(source.members()) == 3 and set(first) < set(source.members())
    # an instance on its way out (standby here; Terminating:Wait under a lifecycle hook) is not a member
    leaving = autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=["execs"])[
        "AutoScalingGroups"][0]["Instances"][0]["InstanceId"]
    autoscaling.enter_standby(AutoScalingGroupName="execs", InstanceIds=[leaving],
                              ShouldDecrementDesiredCapacity=True)
    assert len(source.members()) == 2 and source.members() == private_urls()
    with pytest.raises(SourceUnavailable, match="does not exist"):
        AutoScalingGroup("nope", 8181).members()


def test_an_unreachable_aws_api_keeps_the_ring(monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port_block(1)}")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(SourceUnavailable, match="execs"):
        AutoScalingGroup("execs", 8181).members()


# ---- ring swaps --------------------------------------------------------------------------------------------


def test_newcomer_joins_only_once_ready_and_prewarmed(tmp_path, executors) -> None:
    a, b, newcomer = executors
    path = tmp_path / "executors.json"
    write_members(path, [a.url, b.url])
    membership = Membership(MembersFile(path), interval=0.05)
    prewarming, release = threading.Event(), threading.Event()
    calls: list[tuple[str, HashRing, float]] = []

    def prewarm(url: str, ring: HashRing, seconds: float) -> PrewarmReport:
        calls.append((url, ring, seconds))
        prewarming.set()
        release.wait(WAIT)
        return PrewarmReport(groups=2, warmed=2, seconds=0.1)

    membership.prewarm = prewarm
    membership.start()
    try:
        before = membership.ring
        assert before.nodes == tuple(sorted([a.url, b.url]))
        newcomer.ready = False
        write_members(path, [a.url, b.url, newcomer.url])
        _wait(lambda: any(m["url"] == newcomer.url and m["joining"] for m in membership.snapshot()), "newcomer seen")
        time.sleep(0.5)  # many probes: not ready, so neither prewarmed nor in the ring
        assert not calls and newcomer.url not in membership.ring.nodes
        newcomer.ready = True
        assert prewarming.wait(WAIT)
        (url, ring, seconds), = calls
        assert url == newcomer.url and newcomer.url in ring.nodes and seconds == 30.0
        time.sleep(0.3)
        assert newcomer.url not in membership.ring.nodes  # not before its prewarm is done
        release.set()
        _wait(lambda: newcomer.url in membership.ring.nodes, "newcomer joins")
        assert membership.ring.nodes == ring.nodes
        assert before.nodes == tuple(sorted([a.url, b.url]))  # a ring in use is never changed: it is replaced
        [state] = [m for m in membership.describe()["members"] if m["url"] == newcomer.url]
        assert state["prewarm"]["complete"] and not state["joining"]

        held = membership.ring
        write_members(path, [a.url, newcomer.url])  # b leaves: out of the ring at the next look, not probed
        _wait(lambda: b.url not in membership.ring.nodes, "b leaves")
        assert b.url in held.nodes and b.url not in {m["url"] for m in membership.snapshot()}
        assert b.url not in membership.down()  # a search holding the old ring lets its batch on b finish

        path.write_text("not json")  # a broken file keeps the ring
        time.sleep(0.3)
        assert membership.ring.nodes == tuple(sorted([a.url, newcomer.url]))
    finally:
        release.set()
        membership.stop()


def test_a_withdrawn_newcomer_never_joins(tmp_path, executors) -> None:
    a, _, newcomer = executors
    path = tmp_path / "executors.json"
    write_members(path, [a.url])
    membership = Membership(MembersFile(path), interval=0.05)
    newcomer.ready = False
    membership.start()
    try:
        write_members(path, [a.url, newcomer.url])
        _wait(lambda: newcomer.url in {m["url"] for m in membership.snapshot()}, "newcomer seen")
        write_members(path, [a.url])
        _wait(lambda: newcomer.url not in {m["url"] for m in membership.snapshot()}, "newcomer withdrawn")
        newcomer.ready = True
        time.sleep(0.5)
        assert membership.ring.nodes == (a.url,)
    finally:
        membership.stop()


def _task(key: str, fragment: int) -> Task:
    return Task(kind=FRAGMENT, key=key, table="t", version=1, fragment_id=fragment)


def test_recent_groups_forget_the_least_recently_searched_and_find_a_newcomers_share() -> None:
    recent = RecentGroups(capacity=3)
    query = np.ones((2, 4), np.float32)
    for i in range(5):
        recent.remember({f"t/fragments/group/{i}": [_task(f"t/fragments/group/{i}", i)]}, "l2", query)
    recent.remember({"t/fragments/group/2": [_task("t/fragments/group/2", 2)]}, "l2", query)  # searched again
    assert len(recent) == 3
    ring = HashRing(["http://a:1", "http://b:1", "http://c:1"])
    owned = {w.key: node for node in ring.nodes for w in recent.owned_by(node, ring)}
    assert sorted(owned) == ["t/fragments/group/2", "t/fragments/group/3", "t/fragments/group/4"]
    assert all(ring.preference(k)[0] == node for k, node in owned.items())  # one key a search: its first choice
    # excluding a member hands its groups to the next one on the ring
    gone = owned["t/fragments/group/2"]
    heir = ring.preference("t/fragments/group/2", [gone])[0]
    assert "t/fragments/group/2" in [w.key for w in recent.owned_by(heir, ring, exclude=[gone])]

    # keys searched together are placed together, with bounded loads, as the dispatcher places them: a key
    # whose first choice is full goes on, and is prewarmed where it will go
    together = [f"t/fragments/group/{i}" for i in range(60)]
    recent = RecentGroups()
    recent.remember({k: [_task(k, i)] for i, k in enumerate(together)}, "l2", query)
    placed = {k: node for node, keys in ring.assign(together, eps=0.0).items() for k in keys}
    assert any(ring.preference(k)[0] != node for k, node in placed.items())  # some went past their first choice
    for node in ring.nodes:
        assert sorted(w.key for w in recent.owned_by(node, ring, eps=0.0)) == sorted(
            k for k, n in placed.items() if n == node)


def test_prewarm_stops_at_its_deadline(executors) -> None:
    a, b, newcomer = executors
    membership = Membership([a.url, b.url, newcomer.url], interval=3600)
    membership.start()
    dispatcher = Dispatcher(membership, "token", timeout=60, eps=0.25)
    ring = membership.ring
    keys = [f"t/fragments/group/{i}" for i in range(40)]
    mine = ring.assign(keys, eps=0.25)[newcomer.url]
    assert mine
    dispatcher.recent.remember({k: [_task(k, i)] for i, k in enumerate(keys)}, "l2", np.ones((1, 4), np.float32))

    newcomer.delay = 30.0  # a batch that would take far longer than the prewarm may
    started = time.monotonic()
    report = dispatcher.prewarm(newcomer.url, ring, seconds=1.0)
    assert time.monotonic() - started < 10.0
    assert report.groups == len(mine) and report.warmed == 0 and not report.complete and report.error
    assert newcomer.batches == 1  # the first group's batch, abandoned at the deadline; nothing after it

    newcomer.delay = 0.0  # answers 500 at once: that group is skipped, the others are still tried
    report = dispatcher.prewarm(newcomer.url, ring, seconds=30.0)
    assert report.warmed == 0 and newcomer.batches == 1 + len(mine) and "ExecutorError" in report.error
    membership.stop()


def test_a_search_keeps_the_ring_it_started_with(executors) -> None:
    """A batch re-sent after a failure goes to the next member of the search's own ring, not of a ring
    swapped in meanwhile."""
    from appliance.planner.plan import SearchPlan
    from appliance.query.dispatch import ExecutorsFailed

    a, b, c = executors
    old, new = HashRing([a.url, b.url]), HashRing([a.url, b.url, c.url])
    key = next(k for k in (f"t/fragments/group/{i}" for i in range(10_000))
               if old.preference(k)[0] == a.url and new.preference(k)[0] == a.url
               and new.preference(k, [a.url])[0] == c.url)
    membership = Membership([a.url, b.url], interval=3600)
    membership.start()
    dispatcher = Dispatcher(membership, "token", timeout=60, eps=0.25)
    plan = SearchPlan(table="t", version=1, metric="l2", k=1, filter=None, strategy="exact",
                      tasks=[_task(key, 0)], fetch_k=1)
    a.delay = 1.0  # a answers 500 a second later; meanwhile c joins the ring
    failed: list[BaseException] = []

    def search() -> None:
        try:
            dispatcher.search(plan, np.ones((1, 4), np.float32))
        except ExecutorsFailed as exc:  # a and b both answer 500: the request is blamed, as it should be
            failed.append(exc)

    thread = threading.Thread(target=search)
    thread.start()
    _wait(lambda: a.batches == 1, "the batch reaches a")
    membership.ring = new  # as a join swaps it in
    thread.join(WAIT)
    assert failed and b.batches == 1 and c.batches == 0
    membership.stop()


def test_a_draining_executor_finishes_the_batch_it_runs(executors) -> None:
    """Drain takes an executor out of routing, but a batch it is running is not abandoned and re-sent
    (hedged) as one on an executor that stopped answering is: it finishes there."""
    from appliance.planner.plan import SearchPlan

    a, b, _ = executors
    membership = Membership([a.url, b.url], interval=0.05)
    membership.start()
    dispatcher = Dispatcher(membership, "token", timeout=60, eps=0.25)
    key = next(k for k in (f"t/fragments/group/{i}" for i in range(1000)) if membership.ring.preference(k)[0] == a.url)
    plan = SearchPlan(table="t", version=1, metric="l2", k=1, filter=None, strategy="exact",
                      tasks=[_task(key, 0)], fetch_k=1)
    a.answer, a.delay = True, 1.5
    answers: list[object] = []
    thread = threading.Thread(target=lambda: answers.append(dispatcher.search(plan, np.ones((1, 4), np.float32))))
    thread.start()
    _wait(lambda: a.batches == 1, "the batch reaches a")
    a.draining = True
    _wait(lambda: a.url in membership.down(), "the probe sees a draining")
    thread.join(WAIT)
    [found] = answers
    assert found.ids.tolist() == [[7]] and b.batches == 0  # type: ignore[attr-defined]
    membership.stop()


def test_a_query_node_follows_its_executor_autoscaling_group(moto_aws, tmp_path) -> None:
    """The settings alone (executor_asg, as Terraform writes them) make a query node list the group's
    InService instances and follow a scale-out without a restart."""
    import boto3

    from appliance.query.app import create_app

    ec2, autoscaling = boto3.client("ec2"), boto3.client("autoscaling")
    vpc = ec2.create_vpc(CidrBlock="10.1.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.1.2.0/24")["Subnet"]["SubnetId"]
    ec2.create_launch_template(LaunchTemplateName="x-exec", LaunchTemplateData={"ImageId": "ami-12c6146b"})
    autoscaling.create_auto_scaling_group(AutoScalingGroupName="x-executor",
                                          LaunchTemplate={"LaunchTemplateName": "x-exec"},
                                          MinSize=0, MaxSize=4, DesiredCapacity=1, VPCZoneIdentifier=subnet)
    settings = Settings.load(env={}).replace(
        data=str(tmp_path / "data"), internal_token="t", api_key="k", executor_asg="x-executor",
        executor_asg_port=8282, membership_poll_seconds=0.2, health_interval=0.1)
    app = create_app(settings)
    client = app.test_client()

    def ring() -> dict:
        return client.get("/admin/ring", headers={"x-api-key": "k"}).get_json()

    first = ring()
    assert first["source"] == "autoscaling group x-executor (port 8282)"
    [url] = first["ring"]
    assert url.startswith("http://10.1.2.") and url.endswith(":8282")
    autoscaling.set_desired_capacity(AutoScalingGroupName="x-executor", DesiredCapacity=2)
    # the new instance is seen and waits to join (moto's addresses answer no probe, so it stays joining)
    _wait(lambda: len(ring()["members"]) == 2, "the scale-out is seen")
    assert [m["joining"] for m in ring()["members"] if m["url"] != url] == [True] and ring()["ring"] == [url]


def test_each_executor_gets_the_task_batch_form_it_advertises(executors) -> None:
    """Executors read both forms; a query node sends an executor that does not advertise `wire` 2 (an older
    version, mid-upgrade, in either order) one task per partition naming its queries, and no probe matrix."""
    from appliance.planner.plan import PARTITION, WIRE_LEVEL, SearchPlan, Task

    older, current, _ = executors
    current.wire = WIRE_LEVEL
    probes = np.array([[0, 2], [2, 5]], np.int32)
    tasks = [Task(PARTITION, "t/index/v1/group/0", "t", 3, index_version=1, partitions=(0, 2, 5), ef=40)]
    plan = SearchPlan(table="t", version=3, metric="l2", k=1, filter=None, strategy="ivf", tasks=tasks, fetch_k=1,
                      index_version=1, partitions=[0, 2, 5], probes=probes)
    for executor in (older, current):
        executor.answer = True
        membership = Membership([executor.url], interval=3600)
        membership.start()
        try:
            Dispatcher(membership, "token", timeout=60, eps=0.25).search(plan, np.ones((2, 4), np.float32))
        finally:
            membership.stop()
    assert "probes" not in older.header
    assert [(t["partition"], t.get("queries"), t["ef"]) for t in older.header["tasks"]] == [
        (0, [0], 40), (2, None, 40), (5, [1], 40)]
    assert [Task.from_json(t).partitions for t in older.header["tasks"]] == [(0,), (2,), (5,)]
    assert current.header["probes"] == probes.tolist()
    assert [Task.from_json(t) for t in current.header["tasks"]] == tasks
