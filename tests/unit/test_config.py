"""Settings precedence: CLI flags > CASTRAY_* env > TOML file > defaults; RAY_ADDRESS honoured."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from castray.config import Settings, load_settings
from castray.errors import InvalidRequest


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CASTRAY_PORT",
        "CASTRAY_HOST",
        "CASTRAY_RAY_ADDRESS",
        "RAY_ADDRESS",
        "CASTRAY_CONFIG",
        "CASTRAY_TOKEN",
        "CASTRAY_DEMO_NODES",
    ):
        monkeypatch.delenv(name, raising=False)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "castray.toml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback_port_8000_without_token() -> None:
    settings = load_settings()

    assert (settings.host, settings.port, settings.token, settings.ray_address) == (
        "127.0.0.1",
        8000,
        None,
        None,
    )


def test_file_overrides_defaults(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, 'port = 9001\nhost = "0.0.0.0"\n'))

    assert settings.port == 9001
    assert settings.host == "0.0.0.0"


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTRAY_PORT", "9002")

    settings = load_settings(_toml(tmp_path, "port = 9001\ndemo_nodes = 3\n"))

    assert settings.port == 9002
    assert settings.demo_nodes == 3


def test_flags_override_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTRAY_PORT", "9002")

    settings = load_settings(_toml(tmp_path, "port = 9001\n"), port=9003, host=None)

    assert settings.port == 9003
    assert settings.host == "127.0.0.1"


def test_config_file_can_come_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTRAY_CONFIG", str(_toml(tmp_path, "demo_nodes = 4\n")))

    assert load_settings().demo_nodes == 4


def test_ray_address_env_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.9:6379")

    assert load_settings().ray_address == "127.0.0.9:6379"


def test_castray_ray_address_wins_over_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.9:6379")
    monkeypatch.setenv("CASTRAY_RAY_ADDRESS", "ray://127.0.0.8:10001")

    assert load_settings(ray_address="auto").ray_address == "auto"
    assert load_settings().ray_address == "ray://127.0.0.8:10001"


def test_token_from_env_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASTRAY_TOKEN", "abc")

    settings = load_settings()

    assert settings.token is not None
    assert settings.token.get_secret_value() == "abc"
    assert "abc" not in repr(settings)


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="does not exist"):
        load_settings(tmp_path / "absent.toml")


def test_unknown_key_in_config_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="prot"):
        load_settings(_toml(tmp_path, "prot = 1\n"))


def test_invalid_port_is_rejected() -> None:
    with pytest.raises(ValueError, match="port"):
        load_settings(port=70000)


def test_a_log_level_is_one_of_four_in_any_case() -> None:
    assert load_settings(log_level="DEBUG").log_level == "debug"
    with pytest.raises(ValueError, match="'debug', 'info', 'warning' or 'error'"):
        load_settings(log_level="verbose")


def test_ray_address_from_config_file(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, 'ray_address = "127.0.0.7:6379"\n'))

    assert settings.ray_address == "127.0.0.7:6379"


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_0-9]+)` \|", table, re.MULTILINE))

    assert set(Settings.model_fields) <= listed, sorted(set(Settings.model_fields) - listed)
