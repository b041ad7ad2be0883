"""The lifecycle agent cloud-init puts on every AWS host (terraform/modules/cloud_init/files/appliance-lifecycle.py),
run as its own process against loopback stand-ins: a fake instance metadata service (IMDSv2) that also answers
the autoscaling API's CompleteLifecycleAction (moto's server has no lifecycle actions), moto's server for the
load balancer's target group, and a Flask node with the appliance's real drain gate (appliance/drain.py).

When the metadata says the instance is to terminate, the agent must leave the target group, drain the node
(new work refused, work in flight finished) and only then complete the lifecycle action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from conftest import free_port_block
from flask import Flask, abort, request
from tf_support import REPO, start_moto
from werkzeug.serving import make_server

from appliance.drain import drain_api
from appliance.web import install_common

AGENT = REPO / "terraform" / "modules" / "cloud_init" / "files" / "appliance-lifecycle.py"
COMPLETED = """<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/">
<CompleteLifecycleActionResult/><ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</CompleteLifecycleActionResponse>"""


class FakeAws(BaseHTTPRequestHandler):
    """IMDSv2 (token, instance-id, autoscaling/target-lifecycle-state) and the autoscaling query API."""

    world: dict

    def log_message(self, *_args) -> None:
        pass

    def _send(self, status: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("content-type", kind)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:  # noqa: N802
        ok = self.path == "/latest/api/token" and self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        self._send(200 if ok else 400, "token-1")

    def do_GET(self) -> None:  # noqa: N802
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            return self._send(401, "IMDSv2 token required")
        values = {"/latest/meta-data/instance-id": self.world["instance_id"],
                  "/latest/meta-data/autoscaling/target-lifecycle-state": self.world["state"]}
        if self.path.endswith("target-lifecycle-state"):
            self.world["polls"] += 1
        self._send(200, values[self.path]) if self.path in values else self._send(404, "not found")

    def do_POST(self) -> None:  # noqa: N802
        form = dict(urllib.parse.parse_qsl(self.rfile.read(int(self.headers["content-length"])).decode()))
        if form.get("Action") != "CompleteLifecycleAction":
            return self._send(400, f"unexpected {form.get('Action')}")
        self.world["completed"] = (time.monotonic(), form)
        self._send(200, COMPLETED, "text/xml")


def _serve(server) -> None:
    threading.Thread(target=server.serve_forever, daemon=True).start()


def _wait(condition, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def moto_client(tmp_path: Path):
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto", reason="moto[server] is not installed (pip install -r requirements-test.txt)")
    port = free_port_block(1)
    proc = start_moto(port, tmp_path / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return requests.get(endpoint + "/moto-api/", timeout=1).status_code < 500
        except requests.RequestException:
            return proc.poll() is not None
    _wait(up, "moto's server")
    assert proc.poll() is None, (tmp_path / "moto.log").read_text()
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    yield endpoint, lambda service: boto3.client(service, **kw)
    proc.terminate()
    proc.wait(timeout=30)


def test_agent_leaves_the_target_group_drains_then_completes_the_hook(moto_client, tmp_path: Path) -> None:
    moto_endpoint, client = moto_client
    ec2, elb = client("ec2"), client("elbv2")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    instance_id = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]

    # The node: the appliance's drain gate and admin API, and a slow request to be in flight at the drain.
    node_port = free_port_block(1)
    app, seen = Flask("node"), {}
    install_common(app, "query", 1 << 20)  # the drain gate, error handlers: as on a query node
    app.register_blueprint(drain_api(app, lambda: request.headers.get("x-api-key") == "admin-key" or abort(401)))
    slow_started = threading.Event()

    @app.get("/slow")
    def slow():
        slow_started.set()
        time.sleep(2.0)
        seen["slow_done"] = time.monotonic()
        return "done"

    @app.before_request
    def _look_at_the_load_balancer():
        if request.path == "/admin/drain" and request.method == "POST":
            health = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
            seen["registered_at_drain"] = [h["Target"]["Id"] for h in health]
            seen["drain_at"] = time.monotonic()

    node = make_server("127.0.0.1", node_port, app, threaded=True)
    _serve(node)
    tg = elb.create_target_group(Name="h5-query", Protocol="HTTP", Port=node_port, VpcId=vpc,
                                 TargetType="instance")["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": instance_id, "Port": node_port}])

    world = {"instance_id": instance_id, "state": "InService", "polls": 0, "completed": None}
    fake = ThreadingHTTPServer(("127.0.0.1", free_port_block(1)), type("Handler", (FakeAws,), {"world": world}))
    _serve(fake)
    fake_url = f"http://127.0.0.1:{fake.server_address[1]}"

    (tmp_path / "secrets.env").write_text("APPLIANCE_API_KEY=admin-key\nAPPLIANCE_INTERNAL_TOKEN=other\n")
    config = {"region": "us-east-1", "hook_name": "drain", "autoscaling_group_name": "h5-query",
              "drain_seconds": 30, "port": node_port, "target_group_name": "h5-query",
              "service": "appliance-query.service", "env_files": [str(tmp_path / "missing.env"),
                                                                  str(tmp_path / "secrets.env")],
              "admin_header": "x-api-key", "admin_secrets": ["APPLIANCE_ADMIN_KEY", "APPLIANCE_API_KEY"],
              "poll_seconds": 0.1, "leave_seconds": 1.5}  # an executor's wait for the query nodes' rings
    (tmp_path / "lifecycle.json").write_text(json.dumps(config))
    env = {**os.environ, "APPLIANCE_IMDS_URL": fake_url, "AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2": moto_endpoint,
           "AWS_ENDPOINT_URL_AUTO_SCALING": fake_url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_EC2_METADATA_DISABLED": "true"}
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen([sys.executable, str(AGENT), str(tmp_path / "lifecycle.json")], env=env, stdout=log,
                             stderr=subprocess.STDOUT)
    try:
        # In service: the agent polls and leaves everything alone.
        _wait(lambda: world["polls"] >= 3 or agent.poll() is not None, "the agent's first polls")
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        assert requests.get(f"http://127.0.0.1:{node_port}/admin/drain", headers={"x-api-key": "admin-key"},
                            timeout=10).json()["draining"] is False
        assert world["completed"] is None

        # A request is in flight when the group marks the instance for termination.
        answers = {}
        slow = threading.Thread(target=lambda: answers.setdefault(
            "slow", requests.get(f"http://127.0.0.1:{node_port}/slow", timeout=60)))
        slow.start()
        assert slow_started.wait(60)
        world["state"] = "Terminated"
        terminated_at = time.monotonic()
        assert agent.wait(timeout=120) == 0, (tmp_path / "agent.log").read_text()
        slow.join(60)
        refused = requests.get(f"http://127.0.0.1:{node_port}/slow", timeout=10)
        assert refused.status_code == 503, "the drained node still takes new work"
    finally:
        if agent.poll() is None:
            agent.kill()
        node.shutdown()
        fake.shutdown()

    assert seen["registered_at_drain"] == [], "the node drained while still in the target group"
    assert seen["drain_at"] - terminated_at >= 1.5, "drained before the query nodes' rings could drop it"
    assert answers["slow"].status_code == 200 and answers["slow"].text == "done"
    completed_at, form = world["completed"]
    assert completed_at >= seen["slow_done"], "the hook was completed before the request in flight finished"
    assert {k: form[k] for k in ("LifecycleHookName", "AutoScalingGroupName", "InstanceId",
                                 "LifecycleActionResult")} == {
        "LifecycleHookName": "drain", "AutoScalingGroupName": "h5-query", "InstanceId": instance_id,
        "LifecycleActionResult": "CONTINUE"}
