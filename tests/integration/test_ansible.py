"""ansible/: a rolling upgrade of a running fleet, node by node, with no failed query.

A local fleet (2 query nodes, 2 executors, each a separately managed process in its own folder, as
separate hosts would be) is installed by site.yml from a wheel of the working tree. Under a steady search
load, upgrade.yml rolls it to a wheel of the working tree with another version string, and every node then
reports that version; a deliberately broken release (its nodes cannot start) stops the rollout at the
first node with every other node still serving the previous release, and rollback.yml brings that node
back. No query fails throughout. The client spreads queries over the query nodes as a load balancer does:
a node that refuses the connection or answers 503 `draining` gets the query sent to the other one.

Each release is a real install: its own virtual environment under <node>/releases/<version>, holding only
the appliance's wheel (`--no-deps`; the dependencies come from this venv through a .pth file, to keep the
test fast), served from a working folder with no appliance source in it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO, free_port_block

from appliance import __version__

ANSIBLE = REPO / "ansible"
BIN = Path(sys.executable).parent
PLAYBOOKS = ["site.yml", "upgrade.yml", "rollback.yml"]
API_KEY = "sk-ansible-test"
TOKEN = "internal-ansible-test"
# The release a rollout goes to (one wheel per session: test_upgrade_local.py rolls to it too).
NEW_VERSION = f"{__version__}+rollout1"

pytestmark = pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible-core is not installed")


def ansible_env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_HOME": str(tmp / "ansible-home"),
            "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def playbook(tmp: Path, name: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "ansible-playbook"), "-i", str(tmp / "hosts.yml"), "-e", f"@{tmp / 'vars.json'}",
           name, *args]
    started = time.monotonic()
    log = tmp / f"ansible-{int(time.time() * 1000)}-{name}.log"
    with log.open("w") as out:
        result = subprocess.run(cmd, cwd=ANSIBLE, env=ansible_env(tmp), stdout=out, stderr=subprocess.STDOUT,
                                text=True, timeout=600)
    result.stdout = log.read_text()
    print(f"{name} {' '.join(args)}: rc {result.returncode} in {time.monotonic() - started:.1f}s")
    return result


class Balancer:
    """Searches spread over the query nodes, retried on the other node when one refuses (connection
    refused, or 503 `draining`), as a load balancer's retry does; anything else is a failed query."""

    def __init__(self, urls: list[str], queries: np.ndarray, expected: list[list[int]], threads: int = 1) -> None:
        self.urls, self.queries, self.expected = urls, queries, expected
        self.failures: list[str] = []
        self.answered = 0
        self.retries = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Balancer:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def _run(self, seed: int) -> None:
        session = requests.Session()
        session.headers["x-api-key"] = API_KEY
        i = seed
        while not self._stop.is_set():
            q = i % len(self.queries)
            outcome = self._search(session, i, self.queries[q])
            if isinstance(outcome, str):
                self.failures.append(f"query {q}: {outcome}")
            elif outcome.status_code != 200:
                self.failures.append(f"query {q}: {outcome.status_code} {outcome.text[:300]}")
            elif [r["n"] for r in outcome.json()["results"]] != self.expected[q]:
                self.failures.append(f"query {q}: wrong answer")
            self.answered += 1
            i += 1
            time.sleep(0.05)

    def _search(self, session: requests.Session, i: int, vector: np.ndarray) -> requests.Response | str:
        """The answer, or why there is none."""
        for attempt in range(40):
            url = self.urls[(i + attempt) % len(self.urls)]
            try:
                resp = session.post(f"{url}/api/v1/tables/docs/search", json={"vector": vector.tolist(), "k": 5},
                                    timeout=30)
            except requests.ConnectionError:
                resp = None
            if resp is not None and not (resp.status_code == 503 and resp.json().get("code") == "draining"):
                return resp
            self.retries += 1
            time.sleep(0.05 if attempt < len(self.urls) else 0.25)
        return "no query node answered"


def health(url: str) -> dict | None:
    try:
        return requests.get(f"{url}/healthz", timeout=5).json()
    except requests.RequestException:
        return None


BAD_VERSION = f"{__version__}+broken1"


def rolling_upgrade(tmp_path: Path, wheels: dict[str, Path]) -> str:
    """The fleet's install, rolling upgrade, broken rollout and rollback under load: what it saw, or an
    AssertionError."""
    old, new, bad = __version__, NEW_VERSION, BAD_VERSION

    # The inventory, generated from outputs shaped like `terraform output -json` of the local environment.
    # Two executors: one drained or broken at a time, the other serving (a third would only add a turn).
    base = free_port_block(4)
    nodes = {"query-0": base, "query-1": base + 1, "executor-0": base + 2, "executor-1": base + 3}
    outputs = {
        "query_nodes": {"value": [{"name": n, "address": "127.0.0.1", "port": p}
                                  for n, p in nodes.items() if n.startswith("query")]},
        "executor_nodes": {"value": [{"name": n, "address": "127.0.0.1", "port": p}
                                     for n, p in nodes.items() if n.startswith("executor")]},
        "storage_uri": {"value": str(tmp_path / "data")},
    }
    (tmp_path / "tf-outputs.json").write_text(json.dumps(outputs))
    inventory = subprocess.run([sys.executable, str(ANSIBLE / "inventory" / "terraform_inventory.py"),
                                str(tmp_path / "tf-outputs.json"), "--local", str(tmp_path / "nodes"),
                                "--python", sys.executable], check=True, capture_output=True, text=True).stdout
    (tmp_path / "hosts.yml").write_text(inventory)
    (tmp_path / "vars.json").write_text(json.dumps({
        "common_api_key": API_KEY, "common_internal_token": TOKEN,
        "common_shared_site_packages": sysconfig.get_path("purelib"),
        "common_pip_extra_args": "--no-deps --no-index",
        "common_settings": {"health_interval": 0.2, "log_level": "warning", "executors": 1,
                            "cache_ram_bytes": 64 << 20, "cache_disk_bytes": 64 << 20,
                            "cache_dir": str(tmp_path / "cache"), "query_threads": 4, "executor_threads": 4},
        "common_ready_timeout": 120, "common_stop_timeout": 60, "common_lb_interval": 0,
    }))
    urls = {n: f"http://127.0.0.1:{p}" for n, p in nodes.items()}
    query_urls = [urls["query-0"], urls["query-1"]]

    try:
        site = playbook(tmp_path, "site.yml", "-e", f"common_wheel={wheels[old]}")
        assert site.returncode == 0, site.stdout[-4000:]
        assert {n: (health(u) or {}).get("version") for n, u in urls.items()} == dict.fromkeys(nodes, old)

        rng = np.random.default_rng(11)
        base_vectors = rng.normal(size=(600, 16)).astype(np.float32)
        session = requests.Session()
        session.headers["x-api-key"] = API_KEY
        resp = session.post(f"{query_urls[0]}/api/v1/tables", json={"name": "docs", "dimension": 16, "metric": "l2",
                                                                     "schema": {"n": "int64"}})
        assert resp.status_code == 201, resp.text
        for start in range(0, 600, 100):  # 6 fragments, spread over the executors
            rows = [{"vector": v.tolist(), "n": start + i} for i, v in enumerate(base_vectors[start:start + 100])]
            assert session.post(f"{query_urls[0]}/api/v1/tables/docs/rows", json={"rows": rows}).status_code == 200
        queries = rng.normal(size=(16, 16)).astype(np.float32)
        expected = [np.argsort(((base_vectors - q) ** 2).sum(1), kind="stable")[:5].tolist() for q in queries]

        with Balancer(query_urls, queries, expected) as load:
            time.sleep(1.0)
            before = load.answered

            # The rollout: every node, one at a time, onto the new release.
            upgrade = playbook(tmp_path, "upgrade.yml", "-e", f"common_wheel={wheels[new]}")
            assert upgrade.returncode == 0, upgrade.stdout[-4000:]
            assert {n: (health(u) or {}).get("version") for n, u in urls.items()} == dict.fromkeys(nodes, new)
            for name in nodes:
                assert os.readlink(tmp_path / "nodes" / name / "current") == f"releases/{new}"
            during_upgrade = load.answered - before
            assert not load.failures, load.failures[:5]

            # A broken release: the first executor cannot start, and the rollout stops there.
            broken = playbook(tmp_path, "upgrade.yml", "-e", f"common_wheel={wheels[bad]}")
            assert broken.returncode != 0
            assert health(urls["executor-0"]) is None
            assert os.readlink(tmp_path / "nodes" / "executor-0" / "current") == f"releases/{bad}"
            for name in nodes:
                if name != "executor-0":
                    assert (health(urls[name]) or {}).get("version") == new, name
                    assert not (tmp_path / "nodes" / name / "releases" / bad).exists(), name
            assert requests.get(f"{query_urls[0]}/readyz", timeout=5).json()["executors_live"] == 1
            time.sleep(0.5)

            # ... and rollback.yml brings that node back onto the release it replaced.
            rollback = playbook(tmp_path, "rollback.yml", "--limit", "executor-0")
            assert rollback.returncode == 0, rollback.stdout[-4000:]
            assert {n: (health(u) or {}).get("version") for n, u in urls.items()} == dict.fromkeys(nodes, new)
            time.sleep(0.5)

        assert not load.failures, load.failures[:5]
        assert during_upgrade > 20
        return (f"queries: {load.answered} answered ({during_upgrade} during the upgrade), "
                f"{len(load.failures)} failed, {load.retries} sent again to the other query node")
    finally:
        for name in nodes:
            ctl = tmp_path / "nodes" / name / "bin" / "appliance-ctl"
            if ctl.exists():
                subprocess.run([str(ctl), "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="module", autouse=True)
def rollout(tmp_path_factory: pytest.TempPathFactory, release_wheel: Callable[..., Path],
            request: pytest.FixtureRequest) -> Iterator[Future[str] | None]:
    """The rolling upgrade, started with the module in a thread of its own when its test is selected: it is
    mostly one Ansible process working node after node (about a core), so the syntax checks, ansible-lint and
    the inventory test (each a process of its own) run beside it; its test, after those, waits for it."""
    if not any(item.module is request.module and item.name == "test_rolling_upgrade_with_no_failed_query"
               for item in request.session.items):
        yield None
        return
    wheels = {v: release_wheel(v, broken=v == BAD_VERSION) for v in (__version__, NEW_VERSION, BAD_VERSION)}
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(rolling_upgrade, tmp_path_factory.mktemp("rollout"), wheels)


@pytest.mark.parametrize("name", PLAYBOOKS)
def test_playbook_syntax(name: str, tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "ansible-playbook"), "-i", "inventory/example.yml", "--syntax-check", name],
                            cwd=ANSIBLE, env=ansible_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not (BIN / "ansible-lint").exists(), reason="ansible-lint is not installed")
def test_ansible_lint_production_profile(tmp_path: Path) -> None:
    result = subprocess.run([str(BIN / "ansible-lint"), "--profile", "production", "--offline"], cwd=ANSIBLE,
                            env=ansible_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_inventory_from_terraform_outputs(tmp_path: Path) -> None:
    outputs = {"query_nodes": {"value": ["10.0.1.10", "10.0.1.11"]},
               "executor_nodes": {"value": [{"name": "ex-a", "address": "10.0.2.10"},
                                            {"address": "10.0.2.11", "port": 9000}]},
               "storage_uri": {"value": "s3://bucket/appliance"}}
    (tmp_path / "out.json").write_text(json.dumps(outputs))
    text = subprocess.run([sys.executable, str(ANSIBLE / "inventory" / "terraform_inventory.py"),
                           str(tmp_path / "out.json")], check=True, capture_output=True, text=True).stdout
    (tmp_path / "hosts.yml").write_text(text)
    listed = subprocess.run([str(BIN / "ansible-inventory"), "-i", str(tmp_path / "hosts.yml"), "--list"],
                            cwd=tmp_path, env=ansible_env(tmp_path), check=True, capture_output=True, text=True)
    doc = json.loads(listed.stdout)
    assert doc["query"]["hosts"] == ["query-0", "query-1"]
    assert doc["executor"]["hosts"] == ["ex-a", "executor-1"]
    hostvars = doc["_meta"]["hostvars"]
    assert hostvars["executor-1"]["ansible_host"] == "10.0.2.11" and hostvars["executor-1"]["common_port"] == 9000
    assert hostvars["query-0"]["common_data"] == "s3://bucket/appliance"


@pytest.mark.slow
def test_rolling_upgrade_with_no_failed_query(rollout: Future[str] | None) -> None:
    assert rollout is not None
    print(rollout.result())  # the rollout's own AssertionError, if any, is raised here


def aws_script(monkeypatch: pytest.MonkeyPatch, path: Path):
    """The Python script at `path` loaded as a module, with fake AWS credentials and region set for moto."""
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inventory_lists_autoscaling_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """terraform/environments/aws outputs autoscaling groups, not instances: their instances are listed."""
    moto = pytest.importorskip("moto")
    import boto3

    module = aws_script(monkeypatch, ANSIBLE / "inventory" / "terraform_inventory.py")
    with moto.mock_aws():
        ec2 = boto3.client("ec2")
        subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        image = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(LaunchTemplateName="appliance", LaunchTemplateData={"ImageId": image,
                                                                                "InstanceType": "t3.micro"})
        autoscaling = boto3.client("autoscaling")
        for group, size in (("appliance-query", 2), ("appliance-executor", 3), ("appliance-indexer", 0)):
            autoscaling.create_auto_scaling_group(AutoScalingGroupName=group, MinSize=size, MaxSize=size,
                                                  DesiredCapacity=size, VPCZoneIdentifier=subnet,
                                                  LaunchTemplate={"LaunchTemplateName": "appliance"})
        outputs = {"data_uri": {"value": "s3://bucket/appliance"},
                   "autoscaling_group_names": {"value": {"query": "appliance-query", "executor": "appliance-executor",
                                                         "indexer": "appliance-indexer"}}}
        doc = module.inventory(outputs)
        addresses = {i["InstanceId"]: i["PrivateIpAddress"]
                     for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]}
    children = doc["all"]["children"]
    assert len(children["query"]["hosts"]) == 2 and len(children["executor"]["hosts"]) == 3
    assert children["indexer"]["hosts"] == {}
    hosts = {**children["query"]["hosts"], **children["executor"]["hosts"]}
    assert {name: h["ansible_host"] for name, h in hosts.items()} == addresses
    assert doc["all"]["vars"]["common_data"] == "s3://bucket/appliance"


def test_target_group_script_takes_a_query_node_out_and_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """roles/common/files/target_group.py (drain.yml's and undrain.yml's step on AWS): the node leaves its
    target group, the wait for the deregistration returns, and it comes back in service."""
    moto = pytest.importorskip("moto")
    import boto3

    module = aws_script(monkeypatch, ANSIBLE / "roles/common/files/target_group.py")
    with moto.mock_aws():
        ec2 = boto3.client("ec2")
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        image = ec2.describe_images()["Images"][0]["ImageId"]
        instance = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        elb = boto3.client("elbv2")
        arn = elb.create_target_group(Name="query", Protocol="HTTP", Port=8080, VpcId=vpc)["TargetGroups"][0][
            "TargetGroupArn"]
        module.main("register", arn, instance, "8080")
        health = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        assert [(h["Target"]["Id"], h["TargetHealth"]["State"]) for h in health] == [(instance, "healthy")]
        module.main("deregister", arn, instance, "8080")
        assert elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"] == []
