#!/usr/bin/env python3
"""Write an Ansible inventory (YAML) from Terraform's outputs.

    terraform -chdir=terraform/environments/aws output -json | ansible/inventory/terraform_inventory.py - > hosts.yml
    ansible/inventory/terraform_inventory.py --tf-dir terraform/environments/aws > hosts.yml

It reads these outputs (`terraform output -json` wraps each in {"value": ...}):

    query_nodes, executor_nodes, indexer_nodes
        a list of addresses ("10.0.1.5"), or of objects {"name": ..., "address": ..., "port": ...}
        (name and port optional: names default to <fleet>-<i>, ports to the fleet's default port)
    autoscaling_group_names
        {"query": ..., "executor": ..., "indexer": ...}, as terraform/environments/aws writes: when a fleet
        has no *_nodes output, its in-service instances are listed from the group (boto3, the usual AWS
        credentials and region), named by instance id, at their private address
    data_uri (or storage_uri)   the storage root every node shares (s3://bucket/prefix); becomes common_data

Secrets (API key, internal token) are not written: keep them in a vault file passed with -e @vault.yml.

`--local ROOT` writes an inventory of nodes on this machine instead (the `local` Terraform environment, and
tests): ansible_connection=local, the "process" service manager, and each node in its own folder
ROOT/<name>, since they share one machine. terraform/environments/local outputs `local_root` and
`local_python`, which stand for `--local` and `--python` (the options win):

    terraform -chdir=terraform/environments/local output -json > tf-outputs.json
    ansible/inventory/terraform_inventory.py tf-outputs.json > hosts.yml
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

FLEETS = {"query": ("query_nodes", 8080), "executor": ("executor_nodes", 8181), "indexer": ("indexer_nodes", 8282)}


def inventory(outputs: dict[str, Any], local_root: Path | None = None, python: str | None = None,
              list_group: Callable[[str], list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    values = {name: (o["value"] if isinstance(o, dict) and "value" in o else o) for name, o in outputs.items()}
    if local_root is None and values.get("local_root"):
        local_root = Path(values["local_root"])
    python = python or (values.get("local_python") if local_root is not None else None)
    groups = values.get("autoscaling_group_names") or {}
    children: dict[str, Any] = {}
    for group, (output, default_port) in FLEETS.items():
        nodes = values.get(output)
        if nodes is None and groups.get(group):
            nodes = (list_group or autoscaling_instances)(groups[group])
        hosts = {}
        for i, node in enumerate(nodes or []):
            node = {"address": node} if isinstance(node, str) else dict(node)
            name = node.get("name") or f"{group}-{i}"
            host: dict[str, Any] = {"ansible_host": node["address"]}
            if node.get("port") and int(node["port"]) != default_port:
                host["common_port"] = int(node["port"])
            if local_root is not None:
                host["common_root"] = str(local_root / name)
            hosts[name] = host
        children[group] = {"hosts": hosts}
    if not any(c["hosts"] for c in children.values()):
        raise ValueError("no nodes in the outputs (expected query_nodes, executor_nodes, indexer_nodes or "
                         "autoscaling_group_names with instances)")
    group_vars: dict[str, Any] = {}
    data = values.get("data_uri") or values.get("storage_uri")
    if data:
        group_vars["common_data"] = data
    if local_root is not None:
        group_vars.update({
            "ansible_connection": "local",
            "common_service_manager": "process",
            "common_listen_host": "127.0.0.1",
        })
    if python:
        group_vars["ansible_python_interpreter"] = python
        group_vars["common_python"] = python
    return {"all": {"vars": group_vars, "children": children}}


def autoscaling_instances(group_name: str) -> list[dict[str, Any]]:
    """The in-service instances of an autoscaling group, as {"name": instance id, "address": private IP}."""
    import boto3  # only for this: the rest of the script needs nothing but Python

    asg = boto3.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[group_name])
    ids = [i["InstanceId"] for g in asg["AutoScalingGroups"] for i in g["Instances"]
           if i.get("LifecycleState") == "InService"]
    if not ids:
        return []
    reservations = boto3.client("ec2").describe_instances(InstanceIds=ids)["Reservations"]
    return sorted(({"name": i["InstanceId"], "address": i["PrivateIpAddress"]}
                   for r in reservations for i in r["Instances"]), key=lambda n: n["name"])


def read_outputs(source: str | None, tf_dir: str | None) -> dict[str, Any]:
    if tf_dir:
        out = subprocess.run(["terraform", f"-chdir={tf_dir}", "output", "-json"], check=True,
                             capture_output=True, text=True).stdout
        return json.loads(out)
    if source in (None, "-"):
        return json.load(sys.stdin)
    return json.loads(Path(source).read_text())


def to_yaml(doc: Any, indent: int = 0) -> str:
    """A small YAML writer (JSON scalars are valid YAML), so the script needs nothing but Python."""
    pad = "  " * indent
    if isinstance(doc, dict):
        if not doc:
            return "{}"
        lines = []
        for key, value in doc.items():
            if isinstance(value, dict) and value:
                lines.append(f"{pad}{key}:\n{to_yaml(value, indent + 1)}")
            else:
                lines.append(f"{pad}{key}: {to_yaml(value)}")
        return "\n".join(lines)
    return json.dumps(doc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", nargs="?", help="a file of `terraform output -json`, or - for stdin")
    parser.add_argument("--tf-dir", help="run `terraform output -json` in this Terraform environment")
    parser.add_argument("--local", type=Path, metavar="ROOT", help="nodes on this machine, each under ROOT/<name>")
    parser.add_argument("--python", help="the Python Ansible runs modules with on the nodes")
    args = parser.parse_args(argv)
    doc = inventory(read_outputs(args.source, args.tf_dir), args.local, args.python)
    print("---\n# Generated by ansible/inventory/terraform_inventory.py from Terraform outputs.\n" + to_yaml(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
