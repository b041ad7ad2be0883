"""ansible/record_release.yml, the last play of upgrade.yml and rollback.yml: on AWS the release a rollout
installed goes to the SSM parameter new hosts install from (terraform output `release_parameter`), so a
replacement or a scale-out after an upgrade never brings the old release back. Run for real: ansible-playbook
on a localhost inventory, against moto's server on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, free_port_block
from s3_support import start_moto

BIN = Path(os.environ.get("VIRTUAL_ENV", REPO / ".venv")) / "bin"
if not (BIN / "ansible-playbook").exists():
    BIN = REPO / ".venv" / "bin"
ANSIBLE = REPO / "ansible"
PARAMETER = "/appliance-test/release"

pytestmark = pytest.mark.skipif(not (BIN / "ansible-playbook").exists(), reason="ansible-core is not installed")


@pytest.fixture(scope="module")
def moto_url():
    port = free_port_block(1)
    server = start_moto(port)
    yield f"http://127.0.0.1:{port}"
    server.stop()


def play(tmp_path: Path, moto_url: str, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yml"
    inventory.write_text("all:\n  children:\n    query:\n      hosts:\n        q0:\n"
                         "          ansible_connection: local\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_HOME": str(tmp_path / "home"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_NOCOLOR": "1", "AWS_ENDPOINT_URL": moto_url,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(ANSIBLE / playbook),
                           "-e", f"common_release_parameter={PARAMETER}", *extra],
                          env=env, capture_output=True, text=True, timeout=300)


def parameter(moto_url: str) -> str:
    import boto3

    ssm = boto3.client("ssm", endpoint_url=moto_url, region_name="us-east-1", aws_access_key_id="testing",
                       aws_secret_access_key="testing")
    return ssm.get_parameter(Name=PARAMETER)["Parameter"]["Value"]


def test_a_rollout_records_its_release_for_new_hosts(tmp_path: Path, moto_url: str) -> None:
    done = play(tmp_path, moto_url, "record_release.yml", "-e", "record_release_value=vector-appliance==0.3.0")
    assert done.returncode == 0, done.stdout + done.stderr
    assert parameter(moto_url) == "vector-appliance==0.3.0"
    assert "changed=1" in done.stdout
    again = play(tmp_path, moto_url, "record_release.yml", "-e", "record_release_value=vector-appliance==0.3.0")
    assert again.returncode == 0 and "changed=0" in again.stdout, again.stdout


def test_a_wheel_on_the_controller_needs_a_value_hosts_can_install(tmp_path: Path, moto_url: str) -> None:
    wheel = tmp_path / "vector_appliance-0.4.0-py3-none-any.whl"
    failed = play(tmp_path, moto_url, "record_release.yml", "-e",
                  json.dumps({"record_release_value": "", "common_wheel": str(wheel)}))
    assert failed.returncode != 0 and "common_release_value" in failed.stdout, failed.stdout
    skipped = play(tmp_path, moto_url, "record_release.yml", "-e",
                   '{"record_release_value": "", "record_release_required": false}')
    assert skipped.returncode == 0 and "left unchanged" in skipped.stdout, skipped.stdout
