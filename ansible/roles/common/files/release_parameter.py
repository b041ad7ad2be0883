#!/usr/bin/env python3
"""Record the release a fleet now runs in the SSM parameter that new hosts install from:
    release_parameter.py PARAMETER_NAME VALUE
Run once per play on the controller (record_release.yml) with the playbook's Python, which needs boto3 and
credentials that may write the parameter (terraform output `release_parameter`). Cloud-init installs the
parameter's value on every host that boots later (a replacement, a scale-out, an instance refresh), so after
an upgrade they come up on the release the play installed, not on the first one. Prints `changed` or
`unchanged` (ansible's changed_when reads it)."""

import sys

import boto3


def main(name: str, value: str) -> str:
    ssm = boto3.client("ssm")
    try:
        current = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm.exceptions.ParameterNotFound:
        current = None
    if current == value:
        return "unchanged"
    ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)
    return "changed"


if __name__ == "__main__":
    print(main(*sys.argv[1:]))
