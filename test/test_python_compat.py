"""Python 3.10-3.12 compatibility, checked on the 3.11 that runs here.

Three checks, none of which runs the code under another interpreter:

- ruff.toml's ``target-version`` is the oldest supported Python (py310), so ruff (run by
  test_ruff.py) reports syntax newer than 3.10 (``except*``, ``a[*b]``, ``type X = ...``)
  and its pyupgrade rules never suggest a newer form.
- every module parses with ``ast.parse(..., feature_version=(3, 10))``: a second, best-effort
  grammar check that needs no ruff (on 3.11 it rejects ``except*``, not star indexing).
- ``NEWER_STDLIB``: a list of standard-library names added after 3.10 or removed in 3.12,
  searched in every module (imports, ``module.name`` attributes, bare builtins).

Not caught: any other standard-library difference (a new keyword argument, a changed
default, ``Path.walk`` or other methods reached through an instance), behaviour changes,
third-party wheels missing for an interpreter, and anything under 3.12's grammar that 3.11
cannot parse. Only 3.11 runs here; 3.10 and 3.12 are untested at run time.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OLDEST = (3, 10)
SOURCES = ("quantvla_ros", "test", "launch", "scripts")

# (module, name) -> why it cannot be used while 3.10 is supported.
NEWER_STDLIB = {
    **{("datetime", n): "3.11" for n in ("UTC",)},
    **{("typing", n): "3.11" for n in (
        "Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type",
        "TypeVarTuple", "Unpack", "Required", "NotRequired", "dataclass_transform")},
    ("typing", "override"): "3.12",
    ("typing", "TypeAliasType"): "3.12",
    **{("enum", n): "3.11" for n in (
        "StrEnum", "ReprEnum", "EnumCheck", "verify", "member", "nonmember", "global_enum")},
    **{("asyncio", n): "3.11" for n in ("TaskGroup", "timeout", "timeout_at", "Runner")},
    ("contextlib", "chdir"): "3.11",
    ("hashlib", "file_digest"): "3.11",
    ("inspect", "getmembers_static"): "3.11",
    ("logging", "getLevelNamesMapping"): "3.11",
    ("math", "cbrt"): "3.11",
    ("math", "exp2"): "3.11",
    ("operator", "call"): "3.11",
    ("sys", "exception"): "3.11",
    ("itertools", "batched"): "3.12",
}
NEWER_MODULES = {"tomllib": "3.11", "wsgiref.types": "3.11"}
NEWER_BUILTINS = {"ExceptionGroup": "3.11", "BaseExceptionGroup": "3.11"}
REMOVED_MODULES = {m: "removed in 3.12" for m in ("distutils", "imp", "asynchat", "asyncore",
                                                   "smtpd")}


def python_files(root: Path = ROOT) -> list[Path]:
    files = [p for src in SOURCES for p in sorted((root / src).rglob("*.py"))]
    return files + [root / n for n in ("setup.py", "conftest.py") if (root / n).is_file()]


def newer_stdlib_uses(source: str, filename: str = "<string>") -> list[str]:
    """Return 'file:line: what (why)' for each use of a name listed above."""
    tree = ast.parse(source, filename=filename)
    aliases, problems = {}, []

    def flag(node, what, why):
        problems.append(f"{filename}:{node.lineno}: {what} ({why})")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                aliases[a.asname or top] = a.name if a.asname else top
                why = NEWER_MODULES.get(a.name) or REMOVED_MODULES.get(a.name.split(".")[0])
                if why:
                    flag(node, f"import {a.name}", why)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            why = NEWER_MODULES.get(node.module) or REMOVED_MODULES.get(node.module.split(".")[0])
            if why:
                flag(node, f"from {node.module} import ...", why)
            for a in node.names:
                if (node.module, a.name) in NEWER_STDLIB:
                    flag(node, f"from {node.module} import {a.name}",
                         NEWER_STDLIB[node.module, a.name])
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = aliases.get(node.value.id)
            if (module, node.attr) in NEWER_STDLIB:
                flag(node, f"{module}.{node.attr}", NEWER_STDLIB[module, node.attr])
        elif isinstance(node, ast.Name) and node.id in NEWER_BUILTINS:
            flag(node, node.id, NEWER_BUILTINS[node.id])
    return sorted(problems, key=lambda p: int(p.split(":")[1]))


def test_ruff_targets_the_oldest_python_and_setup_py_agrees():
    ruff = (ROOT / "ruff.toml").read_text(encoding="utf-8")
    major, minor = OLDEST
    assert re.search(rf'(?m)^target-version = "py{major}{minor}"$', ruff)
    setup = (ROOT / "setup.py").read_text(encoding="utf-8")
    assert f'python_requires=">={major}.{minor}"' in setup


@pytest.mark.parametrize("path", python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_parses_with_the_oldest_grammar(path):
    ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=OLDEST)


def test_no_standard_library_name_newer_than_the_oldest_python():
    problems = []
    for path in python_files():
        problems += newer_stdlib_uses(path.read_text(encoding="utf-8"),
                                      str(path.relative_to(ROOT)))
    assert not problems, "not available on Python 3.10 / 3.12:\n" + "\n".join(problems)


def test_the_checks_catch_what_they_claim():
    source = ("import datetime\nimport typing as t\nimport tomllib\n"
              "from enum import StrEnum\nfrom itertools import batched\n"
              "now = datetime.datetime.now(datetime.UTC)\nx: t.Self\n"
              "raise ExceptionGroup('e', [])\n")
    assert [p.split(": ", 1)[1] for p in newer_stdlib_uses(source)] == [
        "import tomllib (3.11)", "from enum import StrEnum (3.11)",
        "from itertools import batched (3.12)", "datetime.UTC (3.11)", "typing.Self (3.11)",
        "ExceptionGroup (3.11)"]
    with pytest.raises(SyntaxError):
        ast.parse("try:\n    pass\nexcept* ValueError:\n    pass\n", feature_version=OLDEST)
    assert newer_stdlib_uses("import datetime\nx = datetime.timezone.utc\n") == []
