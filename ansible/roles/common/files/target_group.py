#!/usr/bin/env python3
"""Take a query node out of its AWS load balancer's target group, or put it back, and wait for it:
    target_group.py deregister|register TARGET_GROUP_ARN TARGET_ID PORT
Run by ansible (roles/common/tasks/drain.yml, undrain.yml) with the node's release Python, which has boto3;
credentials are the host's instance role. Deregistering waits out the target group's deregistration delay,
so the load balancer sends the node no new request and has let the ones it sent finish."""

import sys

import boto3


def main(action: str, arn: str, target_id: str, port: str) -> None:
    elb = boto3.client("elbv2")
    targets = [{"Id": target_id, "Port": int(port)}]
    if action == "deregister":
        elb.deregister_targets(TargetGroupArn=arn, Targets=targets)
        elb.get_waiter("target_deregistered").wait(TargetGroupArn=arn, Targets=targets)
    else:
        elb.register_targets(TargetGroupArn=arn, Targets=targets)
        elb.get_waiter("target_in_service").wait(TargetGroupArn=arn, Targets=targets)
    print(f"{action}ed {target_id}:{port} in {arn}")


if __name__ == "__main__":
    main(*sys.argv[1:])
