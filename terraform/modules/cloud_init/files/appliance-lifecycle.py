#!/opt/appliance/venv/bin/python
"""appliance-lifecycle: drain this node before its autoscaling group terminates it.

cloud-init installs this agent on every host (`appliance-lifecycle.service`, run by the appliance's own
virtual environment, which has boto3 and requests). It polls the instance metadata (IMDSv2)
`autoscaling/target-lifecycle-state`; when that reads `Terminated` (a scale-in, an instance refresh or a
health replacement holds the instance in Terminating:Wait through the group's termination lifecycle hook):

1. a query node leaves its load balancer's target group first and waits until the target is gone: no new
   client request reaches it, and the ones in flight finish within the deregistration delay;
2. an executor waits `leave_seconds` (the query nodes look at the group every `membership_poll_seconds`
   and drop an instance that left InService from their rings: no batch is sent to it after that), then
2. the node drains: `POST /admin/drain?wait=N` on its own port (new work gets 503 `draining` and is
   retried elsewhere; the call returns once the requests in flight have finished), or, on an indexer, its
   service stops (the indexer hands its event back to the queue at once);
3. the agent completes the lifecycle action (CONTINUE), so the instance terminates now, not at the
   hook's timeout.

Usage: appliance-lifecycle /etc/appliance/lifecycle.json (written by cloud-init from Terraform). The
metadata service is APPLIANCE_IMDS_URL (default http://169.254.169.254); AWS endpoints are boto3's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import requests

log = logging.getLogger("appliance-lifecycle")
IMDS = os.environ.get("APPLIANCE_IMDS_URL", "http://169.254.169.254").rstrip("/")


class Agent:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.http = requests.Session()
        self._instance_id: str | None = None

    # ---- instance metadata (IMDSv2) ----

    def metadata(self, path: str) -> str | None:
        """A metadata value, or None where the instance has none (404: not in an autoscaling group yet)."""
        token = self.http.put(f"{IMDS}/latest/api/token", timeout=2,
                              headers={"X-aws-ec2-metadata-token-ttl-seconds": "300"})
        token.raise_for_status()
        resp = self.http.get(f"{IMDS}/latest/meta-data/{path}", timeout=2,
                             headers={"X-aws-ec2-metadata-token": token.text})
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.text.strip()

    @property
    def instance_id(self) -> str:
        if self._instance_id is None:
            self._instance_id = self.metadata("instance-id")
        return self._instance_id

    def client(self, service: str):
        return boto3.client(service, region_name=self.config["region"])

    # ---- the three steps ----

    def leave_load_balancer(self) -> None:
        """Deregister from the target group (idempotent: the group may have done it already) and wait until
        the load balancer has let the target go, after its in-flight requests."""
        elb = self.client("elbv2")
        arn = elb.describe_target_groups(Names=[self.config["target_group_name"]])["TargetGroups"][0][
            "TargetGroupArn"]
        target = {"Id": self.instance_id, "Port": self.config["port"]}
        elb.deregister_targets(TargetGroupArn=arn, Targets=[target])
        log.info("deregistered %s from %s; waiting for the load balancer to let it go", self.instance_id, arn)
        elb.get_waiter("target_deregistered").wait(
            TargetGroupArn=arn, Targets=[target],
            WaiterConfig={"Delay": 2, "MaxAttempts": max(1, self.config["drain_seconds"] // 2)})

    def drain(self) -> None:
        if self.config.get("port") is None:  # an indexer: stopping hands its event back to the queue
            subprocess.run(["systemctl", "stop", self.config["service"]], check=False, timeout=120)
            return
        wait = self.config["drain_seconds"]
        try:
            resp = self.http.post(f"http://127.0.0.1:{self.config['port']}/admin/drain", params={"wait": wait},
                                  headers=self._admin_header(), timeout=wait + 30)
            log.info("drain answered %s: %s", resp.status_code, resp.text.strip())
        except requests.RequestException as exc:  # the node is down already: nothing left to drain
            log.warning("drain failed (%s); letting the instance go", exc)

    def complete(self) -> None:
        self.client("autoscaling").complete_lifecycle_action(
            LifecycleHookName=self.config["hook_name"],
            AutoScalingGroupName=self.config["autoscaling_group_name"],
            InstanceId=self.instance_id, LifecycleActionResult="CONTINUE")
        log.info("lifecycle action completed: %s terminates", self.instance_id)

    def _admin_header(self) -> dict[str, str]:
        """Query nodes take the admin key (the API key when none is set) in x-api-key; executors the
        internal token in x-appliance-token. Both come from the node's environment files."""
        env: dict[str, str] = {}
        for path in self.config["env_files"]:
            if Path(path).exists():
                for line in Path(path).read_text().splitlines():
                    key, sep, value = line.partition("=")
                    if sep and not key.startswith("#"):
                        env[key.strip()] = value.strip()
        header, names = self.config["admin_header"], self.config["admin_secrets"]
        secret = next((env[n] for n in names if env.get(n)), "")
        return {header: secret}

    def run(self) -> int:
        poll = float(self.config.get("poll_seconds", 5))
        while True:
            try:
                state = self.metadata("autoscaling/target-lifecycle-state")
            except requests.RequestException as exc:
                log.warning("instance metadata: %s", exc)
                state = None
            if state == "Terminated":
                log.info("%s is terminating: draining", self.instance_id)
                if self.config.get("target_group_name"):
                    try:
                        self.leave_load_balancer()
                    except Exception:  # noqa: BLE001 - drain anyway: the node refuses new work from here on
                        log.exception("leaving the load balancer failed")
                leave = float(self.config.get("leave_seconds", 0))
                if leave > 0:  # an executor: the query nodes' next look at the group takes it out of their rings
                    log.info("waiting %.0f s for the query nodes to drop this executor from their rings", leave)
                    time.sleep(leave)
                self.drain()
                self.complete()
                return 0
            time.sleep(poll)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    config = json.loads(Path(argv[1] if len(argv) > 1 else "/etc/appliance/lifecycle.json").read_text())
    return Agent(config).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
