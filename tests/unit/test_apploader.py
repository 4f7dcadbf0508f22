"""hotswap.apploader: `module:callable` to a WSGI app, or one line saying why not.

Proven with real modules written to a temporary folder and really imported: the accepted
forms (`name`, `obj.attr`, `factory()`), and that every failure an operator can cause is a
StartupError of one line that tells the cases apart (no such module vs. a missing
dependency inside it, no such attribute, not callable, an exception or SyntaxError at
import, a failing factory). The app's folder is found from the working directory even
when the interpreter did not put it on sys.path (the `hotswap` console script).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

from hotswap.apploader import load_app
from hotswap.errors import StartupError

pytestmark = pytest.mark.timeout(10)  # each test; longer ones say so

_names = itertools.count()


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Write a uniquely named module into tmp_path (on sys.path) and return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def make(source: str) -> str:
        name = f"hotswap_test_app_{next(_names)}"
        (tmp_path / f"{name}.py").write_text(source)
        written.append(name)
        return name

    yield make
    for name in written:
        sys.modules.pop(name, None)


def error_of(spec: str) -> str:
    with pytest.raises(StartupError) as info:
        load_app(spec)
    text = str(info.value)
    assert "\n" not in text, f"not one line: {text!r}"
    return text


APP = "def app(environ, start_response):\n    return [b'hi']\n"


def test_plain_callable(module) -> None:
    name = module(APP)
    app = load_app(f"{name}:app")
    assert app.__name__ == "app" and app({}, None) == [b"hi"]


def test_dotted_attribute(module) -> None:
    name = module("class Holder:\n    @staticmethod\n    def wsgi(e, s):\n        return [b'dotted']\n"
                  "holder = Holder()\n")
    assert load_app(f"{name}:holder.wsgi")({}, None) == [b"dotted"]


def test_factory_is_called_once(module) -> None:
    name = module("calls = []\n"
                  "def create():\n    calls.append(1)\n"
                  "    return lambda e, s: [b'made']\n")
    app = load_app(f"{name}:create()")
    assert app({}, None) == [b"made"]
    assert sys.modules[name].calls == [1]


def test_callable_object_instance(module) -> None:
    name = module("class App:\n    def __call__(self, e, s):\n        return [b'obj']\n"
                  "application = App()\n")
    assert load_app(f"{name}:application")({}, None) == [b"obj"]


def test_package_submodule(tmp_path: Path, module) -> None:
    pkg = tmp_path / "hotswap_test_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "web.py").write_text(APP)
    try:
        assert load_app("hotswap_test_pkg.web:app")({}, None) == [b"hi"]
    finally:
        sys.modules.pop("hotswap_test_pkg.web", None)
        sys.modules.pop("hotswap_test_pkg", None)


@pytest.mark.parametrize("spec", ["justamodule", ":app", "mod:", "mod"])
def test_malformed_spec(spec: str) -> None:
    assert error_of(spec) == f"APP must look like module:callable, got {spec!r}"


def test_no_such_module() -> None:
    assert error_of("hotswap_no_such_module_x:app") == \
        "cannot import APP module 'hotswap_no_such_module_x': no such module"


def test_no_such_package_member() -> None:
    assert error_of("hotswap_no_such_pkg_x.sub:app") == \
        "cannot import APP module 'hotswap_no_such_pkg_x.sub': no such module"


def test_missing_dependency_is_not_reported_as_a_missing_app(module) -> None:
    name = module("import hotswap_missing_dependency_x\n" + APP)
    assert error_of(f"{name}:app") == (
        f"cannot import APP module {name!r}: ModuleNotFoundError: "
        "No module named 'hotswap_missing_dependency_x'")


def test_missing_dependency_whose_name_starts_the_app_name(module) -> None:
    """`import hotswap_test` missing inside `hotswap_test_app_N` is still a missing dependency:
    only a whole dotted prefix of the APP module can be the APP module itself missing."""
    name = module("import hotswap_test\n" + APP)
    assert name.startswith("hotswap_test")
    assert error_of(f"{name}:app") == (
        f"cannot import APP module {name!r}: ModuleNotFoundError: No module named 'hotswap_test'")


def test_missing_attribute(module) -> None:
    name = module(APP)
    assert error_of(f"{name}:application") == \
        f"APP '{name}:application': module {name!r} has no 'application'"


def test_missing_dotted_attribute(module) -> None:
    name = module("class H:\n    pass\nholder = H()\n")
    assert error_of(f"{name}:holder.wsgi") == \
        f"APP '{name}:holder.wsgi': module {name!r} has no 'holder.wsgi'"


@pytest.mark.parametrize("attr", ["app-1", "1app", "app..x", "app x"])
def test_attribute_that_is_not_a_name(module, attr: str) -> None:
    name = module(APP)
    assert error_of(f"{name}:{attr}").endswith("is not a name")


def test_not_callable(module) -> None:
    name = module("app = {'not': 'callable'}\n")
    assert error_of(f"{name}:app") == f"APP '{name}:app' is not callable (it is a dict)"


def test_factory_returning_a_non_callable(module) -> None:
    name = module("def create():\n    return 42\n")
    assert error_of(f"{name}:create()") == f"APP '{name}:create()' is not callable (it is a int)"


def test_factory_that_is_not_callable(module) -> None:
    name = module("create = 5\n")
    assert error_of(f"{name}:create()") == f"APP '{name}:create()': the factory is not callable"


def test_factory_raising(module) -> None:
    name = module("def create():\n    raise KeyError('DATABASE_URL')\n")
    assert error_of(f"{name}:create()") == \
        f"APP '{name}:create()': the factory raised KeyError: 'DATABASE_URL'"


def test_exception_at_import_keeps_its_message_on_one_line(module) -> None:
    name = module("raise RuntimeError('first line\\n   second line')\n")
    assert error_of(f"{name}:app") == \
        f"cannot import APP module {name!r}: RuntimeError: first line second line"


def test_syntax_error_names_file_and_line(module, tmp_path: Path) -> None:
    name = module("x = 1\ndef app(:\n    pass\n")
    text = error_of(f"{name}:app")
    assert text.startswith(f"cannot import APP module {name!r}: SyntaxError: ")
    assert f"{name}.py" in text and "line 2" in text


def test_system_exit_at_import_is_an_error_not_an_exit(module) -> None:
    name = module("import sys\nsys.exit(3)\n")
    assert error_of(f"{name}:app") == f"cannot import APP module {name!r}: SystemExit: 3"


def test_keyboard_interrupt_is_not_swallowed(module) -> None:
    name = module("raise KeyboardInterrupt\n")
    with pytest.raises(KeyboardInterrupt):
        load_app(f"{name}:app")


def test_current_directory_is_searched_without_it_on_sys_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `hotswap` console script does not put the working directory on sys.path."""
    name = f"hotswap_test_cwd_{next(_names)}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    try:
        assert load_app(f"{name}:app")({}, None) == [b"hi"]
    finally:
        sys.modules.pop(name, None)
