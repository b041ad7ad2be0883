from __future__ import annotations

import argparse

import pytest

from appliance.config import Settings, add_setting_flags, settings_table_markdown


def test_precedence_flag_over_env_over_file_over_default(tmp_path) -> None:
    toml = tmp_path / "a.toml"
    toml.write_text('port = 7000\nexecutors = 5\ndata = "/from/file"\n')
    env = {"APPLIANCE_CONFIG": str(toml), "APPLIANCE_PORT": "7100", "APPLIANCE_ROUTING_EPS": "0.5"}
    s = Settings.load({"port": 7200}, env=env)
    assert (s.port, s.executors, s.data, s.routing_eps, s.max_k) == (7200, 5, "/from/file", 0.5, 10_000)
    assert Settings.load(env=env).port == 7100


def test_bad_values_and_unknown_file_keys_are_rejected(tmp_path) -> None:
    with pytest.raises(ValueError, match="APPLIANCE_PORT"):
        Settings.load(env={"APPLIANCE_PORT": "eighty"})
    toml = tmp_path / "b.toml"
    toml.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="prot"):
        Settings.load(env={"APPLIANCE_CONFIG": str(toml)})


def test_every_setting_has_a_flag_an_env_var_and_docs() -> None:
    parser = argparse.ArgumentParser()
    add_setting_flags(parser)
    args = parser.parse_args(["--executor-base-port", "9000", "--routing-eps", "0.1"])
    assert Settings.load(vars(args), env={}).executor_base_port == 9000
    table = settings_table_markdown()
    for name, value in Settings().to_env().items():
        assert f"`{name}`" in table
        assert Settings.load(env={name: value}) == Settings()


def test_readme_documents_every_setting() -> None:
    from conftest import REPO

    readme = (REPO / "README.md").read_text()
    for name in Settings().to_env():
        assert name in readme, f"README does not document {name}"
