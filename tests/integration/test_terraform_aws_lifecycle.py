"""environments/aws: every fleet drains before it terminates, and replacements install the release in use.

The same plan and apply against moto's server as tests/integration/test_terraform.py (its fixtures, reused):
each autoscaling group has a termination lifecycle hook and a rolling instance refresh that keeps capacity;
each launch template's cloud-init runs the lifecycle agent against that hook, reads the release from its SSM
parameter, and no timer restarts the query service; the roles may complete their own group's hook only.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
import test_terraform as base
import yaml

# The AWS environment applied against moto, from test_terraform (a module-scoped apply of its own here).
tf, tree, moto, aws_env = base.tf, base.tree, base.moto, base.aws_env

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
