"""Turn `module:callable` into a WSGI callable, with errors an operator can act on."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

from .errors import StartupError
from .logs import log_app_traceback

WSGIApp = Callable[..., Any]


def load_app(spec: str) -> WSGIApp:
    """Import the app; `module:name`, `module:obj.attr` and `module:factory()` are accepted.

    Every failure becomes a StartupError of one line. The exception text of an error
    raised by the app's own module is kept (a SyntaxError names file and line), since
    that is what the operator needs to fix it.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StartupError(f"APP must look like module:callable, got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    module = _import(module_name)
    call = attr.endswith("()")
    target: Any = module
    for part in attr.removesuffix("()").split("."):
        if not part.isidentifier():
            raise StartupError(f"APP {spec!r}: {attr!r} is not a name")
        try:
            target = getattr(target, part)
        except AttributeError:
            raise StartupError(f"APP {spec!r}: module {module_name!r} has no {attr!r}") from None
    if call:
        target = _call_factory(spec, target)
    if not callable(target):
        raise StartupError(f"APP {spec!r} is not callable (it is a {type(target).__name__})")
    return target


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name + ".").startswith(exc.name + "."):  # it, or a parent
            raise StartupError(f"cannot import APP module {module_name!r}: no such module") from None
        raise _with_traceback(f"cannot import APP module {module_name!r}: {_one_line(exc)}", exc) from None
    except BaseException as exc:  # the app's import ran arbitrary code
        if isinstance(exc, KeyboardInterrupt):
            raise
        summary = f"cannot import APP module {module_name!r}: {_one_line(exc)}"
        if isinstance(exc, SystemExit):  # sys.exit() in the app, or our own stop signal
            raise StartupError(summary) from None
        raise _with_traceback(summary, exc) from None


def _call_factory(spec: str, factory: Any) -> Any:
    if not callable(factory):
        raise StartupError(f"APP {spec!r}: the factory is not callable")
    try:
        return factory()
    except Exception as exc:
        raise _with_traceback(f"APP {spec!r}: the factory raised {_one_line(exc)}", exc) from None


def _with_traceback(summary: str, exc: BaseException) -> StartupError:
    """Log where the app failed (file, line, traceback); the error itself stays one line."""
    log_app_traceback(summary, exc)
    return StartupError(summary)


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())
