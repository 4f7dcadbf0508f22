"""Python config files (`--config app.conf.py`): settings and hooks in one module.

Module-level names that are options (the TOML keys, with `_`) are settings; functions
named like gunicorn's server hooks are hooks (hotswap.hooks). Everything else is left
alone (imports, helpers, UPPER_CASE constants), except what looks like a misspelt
setting or hook: that is an error, as an unknown TOML key is, since a silently ignored
`worker = 4` or `on_start` would be found only in production.

The file is executed anew at every start and HUP, without writing bytecode next to it
(a cached .pyc could hide an edit made within the same second).
"""

from __future__ import annotations

import inspect
import traceback
import types
from typing import Any

from .errors import StartupError
from .hooks import HOOK_PREFIXES, SIGNATURES, Hooks


def is_python(path: str) -> bool:
    """A config file is Python when its name ends in .py; anything else is TOML."""
    return path.endswith(".py")


def read_python(path: str, settings: set[str]) -> tuple[dict[str, Any], Hooks]:
    """Run the file; its settings (raw values, names with `_`) and its hooks."""
    namespace = _execute(path)
    values: dict[str, Any] = {}
    functions: dict[str, Any] = {}
    for name, value in namespace.items():
        if name.startswith("_") or name.isupper() or isinstance(value, types.ModuleType):
            continue
        if name in SIGNATURES:
            functions[name] = _checked_hook(path, name, value)
        elif name in settings:
            values[name] = list(value) if isinstance(value, tuple) else value
        elif callable(value):
            if name.startswith(HOOK_PREFIXES) and inspect.isfunction(value):
                raise StartupError(f"config file {path}: unknown hook '{name}'")
        else:
            raise StartupError(f"config file {path}: unknown setting '{name}'")
    return values, Hooks(functions, path)


def _execute(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            source = fh.read()
    except FileNotFoundError:
        raise StartupError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise StartupError(f"cannot read config file {path}: {exc.strerror}") from None
    module = types.ModuleType("hotswap_config")
    module.__file__ = path
    try:
        code = compile(source, path, "exec", dont_inherit=True)
        exec(code, module.__dict__)
    except BaseException as exc:  # the file ran arbitrary code; KeyboardInterrupt included
        raise StartupError(f"config file {path} cannot be loaded: {_where(exc, path)}") from None
    return module.__dict__


def _where(exc: BaseException, path: str) -> str:
    """`line 3: NameError: name 'x' is not defined`: the file's last line in the traceback."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    line = getattr(exc, "lineno", None) if isinstance(exc, SyntaxError) else None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == path:
            line = frame.lineno
    return f"line {line}: {text}" if line else text


def _checked_hook(path: str, name: str, value: Any) -> Any:
    """A hook must accept the arguments it will be called with: checked now, not at 3 am."""
    arguments = SIGNATURES[name]
    if not callable(value):
        raise StartupError(f"config file {path}: '{name}' must be a function")
    try:
        inspect.signature(value).bind(*arguments)
    except TypeError:
        raise StartupError(f"config file {path}: hook {name} must take {len(arguments)} "
                           f"argument(s): {name}({', '.join(arguments)})") from None
    except ValueError:
        pass  # no signature to check (a builtin): let it be
    return value
