"""Python config files and the settings record around them (no process started)."""

from __future__ import annotations

import logging
import tomllib
from pathlib import Path

import pytest

from hotswap import config as config_mod
from hotswap.errors import StartupError
from hotswap.hooks import Hooks


def write(tmp: Path, body: str, name: str = "app.conf.py") -> str:
    path = tmp / name
    path.write_text(body)
    return str(path)


def test_settings_and_hooks_come_from_module_level_names(tmp_path: Path) -> None:
    path = write(tmp_path, "import os\nCONSTANT = 3\n_private = 1\nworkers = CONSTANT + 1\n"
                           "bind = ('127.0.0.1:1', 'unix:/tmp/s')\numask = 0o27\n"
                           "def helper(): pass\ndef when_ready(server): pass\n")
    cfg = config_mod.build({"config": path})
    assert cfg.workers == 4 and cfg.bind == ["127.0.0.1:1", "unix:/tmp/s"] and cfg.umask == 0o27
    assert list(cfg.hooks.functions) == ["when_ready"] and cfg.hooks.path == path


def test_flags_win_over_the_python_file(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 3\nthreads = 2\n")
    cfg = config_mod.build({"config": path, "workers": 5})
    assert (cfg.workers, cfg.threads) == (5, 2)


@pytest.mark.parametrize("value, mode", [("022", 0o22), ("0o27", 0o27), ("7", 0o7), (0o77, 0o77)])
def test_umask_is_octal(value: object, mode: int) -> None:
    assert config_mod.umask_value(value, "--umask") == mode


@pytest.mark.parametrize("value", ["9", "abc", 1.5, True])
def test_a_bad_umask_is_refused(value: object) -> None:
    with pytest.raises(StartupError, match="must be an octal mode"):
        config_mod.umask_value(value, "--umask")


def test_a_raising_hook_is_logged_never_propagated(caplog: pytest.LogCaptureFixture) -> None:
    def broken(server: object) -> None:
        raise SystemExit(2)

    hooks = Hooks({"on_exit": broken}, "x.conf.py")
    logger = logging.getLogger("hotswap.error")
    logger.addHandler(caplog.handler)
    try:
        hooks.call("on_exit", object())
        hooks.call("when_ready", object())  # not defined: nothing happens
    finally:
        logger.removeHandler(caplog.handler)
    assert "hook on_exit (x.conf.py) raised; going on" in caplog.text
    assert "SystemExit: 2" in caplog.text


def test_print_config_lines_are_toml_and_rebuild_the_same_config(tmp_path: Path) -> None:
    cfg = config_mod.build({"workers": 3, "umask": 0o22, "name": "a \"b\" \\ c", "bind": ["[::1]:80"]})
    text = "\n".join(config_mod.to_toml(cfg))
    again = config_mod.build({"config": write(tmp_path, text, "printed.toml")})
    assert again == config_mod.Config(**{**vars(cfg), "config": again.config})
    assert tomllib.loads(text)["umask"] == 0o22
