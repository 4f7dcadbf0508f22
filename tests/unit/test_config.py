"""hotswap.config: defaults, then the TOML file, then the flags the operator typed.

Proven: every field has a usable default; the file accepts the TOML types a person would
write (dashes or underscores, a string or a list for list options, an integer for a float)
and refuses anything else with one line naming the file and the key; flags beat the file
but only when typed; validation names the bad option. HUP re-runs `build` with the same
flags, so it must be a pure function of them and the file's current content.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hotswap import config as config_mod
from hotswap.config import DEMO_APP, Config, build, read_toml
from hotswap.errors import StartupError

pytestmark = pytest.mark.timeout(10)  # each test; longer ones say so


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "hotswap.toml"
    path.write_text(text)
    return str(path)


def test_defaults_are_valid() -> None:
    cfg = build({})
    assert cfg.app == DEMO_APP
    assert cfg.bind == [] and cfg.workers >= 1 and cfg.threads == 1
    assert (cfg.timeout, cfg.graceful_timeout, cfg.keepalive) == (30.0, 30.0, 5.0)
    assert cfg.error_log == "-" and cfg.access_log is None and cfg.log_level == "info"
    assert cfg.forwarded_allow_ips == ["127.0.0.1", "::1"]
    assert cfg.pidfile is None and cfg.daemon is False and cfg.preload is False


def test_default_lists_are_not_shared_between_records() -> None:
    first, second = Config(), Config()
    first.bind.append("127.0.0.1:1")
    first.forwarded_allow_ips.append("10.0.0.1")
    assert second.bind == [] and second.forwarded_allow_ips == ["127.0.0.1", "::1"]


def test_file_values_are_read_with_dashes_or_underscores(tmp_path: Path) -> None:
    path = write(tmp_path, 'app = "mod:app"\nworkers = 3\ngraceful-timeout = 5\n'
                           'max_requests = 100\npreload = true\nbind = ["127.0.0.1:1", "unix:/s"]\n'
                           'forwarded-allow-ips = "10.0.0.1, 10.0.0.2"\nlog-level = "debug"\n')
    values = read_toml(path)
    assert values == {
        "app": "mod:app", "workers": 3, "graceful_timeout": 5.0, "max_requests": 100,
        "preload": True, "bind": ["127.0.0.1:1", "unix:/s"],
        "forwarded_allow_ips": ["10.0.0.1", "10.0.0.2"], "log_level": "debug",
    }
    assert isinstance(values["graceful_timeout"], float)


def test_a_single_bind_string_is_one_address_even_with_a_comma(tmp_path: Path) -> None:
    # "bind" is never split on commas (unix paths may hold one); other lists are.
    assert read_toml(write(tmp_path, 'bind = "unix:/tmp/a,b.sock"\n')) == {
        "bind": ["unix:/tmp/a,b.sock"]}


def test_flags_beat_the_file_and_the_file_beats_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, 'workers = 3\nthreads = 4\nname = "fromfile"\n')
    cfg = build({"config": path, "workers": 1})
    assert (cfg.workers, cfg.threads, cfg.name) == (1, 4, "fromfile")
    assert cfg.config == path


def test_a_flag_left_as_none_does_not_erase_the_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 3\n")
    assert build({"config": path, "workers": None}).workers == 3


def test_build_reads_the_file_again_each_time(tmp_path: Path) -> None:
    """HUP calls build() with the same flags: a changed file must be seen."""
    flags = {"config": write(tmp_path, "workers = 2\n")}
    assert build(flags).workers == 2
    write(tmp_path, "workers = 5\n")
    assert build(flags).workers == 5


@pytest.mark.parametrize("text, message", [
    ("wrkers = 2\n", "unknown key 'wrkers'"),
    ('config = "other.toml"\n', "unknown key 'config'"),
    ("[server]\nworkers = 2\n", "unknown key 'server'"),
    ('workers = "x"\n', "'workers' must be an integer, got 'x'"),
    ("workers = 2.5\n", "'workers' must be an integer, got 2.5"),
    ("workers = true\n", "'workers' must be an integer, got True"),
    ('timeout = "soon"\n', "'timeout' must be a number, got 'soon'"),
    ("timeout = false\n", "'timeout' must be a number, got False"),
    ('daemon = "yes"\n', "'daemon' must be true or false, got 'yes'"),
    ("app = 3\n", "'app' must be a string, got 3"),
    ("bind = [1, 2]\n", "'bind' must be a string or a list of strings"),
    ("forwarded_allow_ips = 5\n", "'forwarded-allow-ips' must be a string or a list of strings"),
])
def test_bad_file_values_are_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                          message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(StartupError) as info:
        read_toml(path)
    text = str(info.value)
    assert text == f"config file {path}: {message}"
    assert "\n" not in text


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = \n")
    with pytest.raises(StartupError) as info:
        read_toml(path)
    assert str(info.value).startswith(f"config file {path} is not valid TOML: ")
    assert "\n" not in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(StartupError, match=r"^config file .*nope\.toml does not exist$"):
        build({"config": str(missing)})
    with pytest.raises(StartupError, match=r"^cannot read config file .*: Is a directory$"):
        read_toml(str(tmp_path))


@pytest.mark.parametrize("field, value, message", [
    ("workers", 0, "workers must be at least 1"),
    ("threads", 0, "threads must be at least 1"),
    ("timeout", 0.0, "timeout must be positive"),
    ("graceful_timeout", -1.0, "graceful-timeout must not be negative"),
    ("keepalive", -0.5, "keepalive must not be negative"),
    ("max_requests", -1, "max-requests must not be negative"),
    ("max_requests_jitter", -1, "max-requests-jitter must not be negative"),
    ("upgrade_surge", -1, "upgrade-surge must not be negative"),
    ("upgrade_timeout", 0.0, "upgrade-timeout must be positive"),
    ("backlog", 0, "backlog must be at least 1"),
    ("limit_request_line", 0, "limit-request-line must be at least 1"),
    ("limit_request_fields", 0, "limit-request-fields must be at least 1"),
    ("limit_request_field_size", 0, "limit-request-field-size must be at least 1"),
    ("log_level", "loud", "log-level must be one of debug, info, warning, error, critical"),
    ("app", "justamodule", "APP must look like module:callable, got 'justamodule'"),
])
def test_validation_names_the_option(field: str, value: object, message: str) -> None:
    with pytest.raises(StartupError) as info:
        build({field: value})
    assert str(info.value) == f"invalid configuration: {message}"


def test_zero_is_allowed_where_it_means_off() -> None:
    cfg = build({"keepalive": 0.0, "graceful_timeout": 0.0, "max_requests": 0})
    assert (cfg.keepalive, cfg.graceful_timeout, cfg.max_requests) == (0.0, 0.0, 0)


def test_log_level_is_case_insensitive() -> None:
    assert build({"log_level": "WARNING"}).log_level == "WARNING"


def test_validation_applies_to_file_values_too(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="^invalid configuration: threads must be at least 1$"):
        build({"config": write(tmp_path, "threads = 0\n")})


def test_every_field_but_config_can_be_set_from_a_file(tmp_path: Path) -> None:
    """The file and the command line offer the same options (the CLI's names, with '_')."""
    samples = {"str": '"x:y"', "str | None": '"x"', "int": "2", "float": "2.5", "bool": "true",
               "list[str]": '["a"]', "int | None": "0o22"}
    lines = [f"{name} = {samples[f.type]}" for name, f in config_mod.FIELDS.items()
             if name != "config"]
    values = read_toml(write(tmp_path, "\n".join(lines) + "\n"))
    assert set(values) == set(config_mod.FIELDS) - {"config"}
