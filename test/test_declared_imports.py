"""Every third-party module the installed package imports is declared for rosdep or pip.

The package (quantvla_ros/ and the launch files installed from launch/) is walked with
``ast``. Each top-level module outside the standard library must be an <exec_depend> of
package.xml (through ``ROSDEP_KEYS``, or under its own name for ROS packages), a line of
requirements-pip.txt, left to the platform (``PLATFORM``), or listed in ``OPTIONAL`` with a
reason; an optional module may be imported only inside a function or a
``try: ... except ImportError`` block, never at module level.
"""

import ast
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("quantvla_ros", "launch")
FIRST_PARTY = {"quantvla_ros"}

# Module -> rosdep key, where they differ (keys checked against rosdistro's python.yaml).
ROSDEP_KEYS = {
    "numpy": "python3-numpy",
    "yaml": "python3-yaml",
    "tqdm": "python3-tqdm",
    "PIL": "python3-pil",
    "matplotlib": "python3-matplotlib",
    "rosbags": "python3-rosbags-pip",
    "transformers": "python3-transformers-pip",
}
# Module -> pip distribution, where they differ.
PIP_NAMES = {"yaml": "pyyaml", "PIL": "pillow"}
# Not declared anywhere on purpose: requirements-pip.txt must say so in a comment.
PLATFORM = {"torch": "the CPU / CUDA wheel, or NVIDIA's JetPack wheel on a Jetson"}
# Imported only lazily or under try/except ImportError, and not installed with the package.
OPTIONAL = {
    "libero": "sim/libero_env.py runs inside .venv-libero (make libero)",
    "tokenizers": "training/bpe.py only (not deployed); transformers depends on it",
}


def _catches_import_error(node: ast.Try) -> bool:
    for handler in node.handlers:
        names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        if any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError")
               for n in names):
            return True
    return False


def third_party_imports(paths) -> dict[str, list[tuple[str, int, bool]]]:
    """Return {top-level module: [(file, line, optional)]} for non-stdlib, non-package imports.

    An import is optional when it sits in a function body or in the ``try`` body of a block
    that catches ImportError / ModuleNotFoundError.
    """
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    found: dict[str, list[tuple[str, int, bool]]] = {}

    def visit(node, optional: bool, where: str):
        if isinstance(node, ast.Import | ast.ImportFrom):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                names = [node.module] if node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in FIRST_PARTY:
                    found.setdefault(top, []).append((where, node.lineno, optional))
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            optional = True
        if isinstance(node, ast.Try) and _catches_import_error(node):
            for child in node.body:
                visit(child, True, where)
            for child in (*node.handlers, *node.orelse, *node.finalbody):
                visit(child, optional, where)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, optional, where)

    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        visit(tree, False, str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name)
    return found


def package_xml_depends(text: str) -> set[str]:
    """Return the run-time dependency keys (exec_depend and depend) of a package.xml."""
    root = ET.fromstring(text)
    return {e.text.strip() for tag in ("exec_depend", "depend") for e in root.iter(tag)}


def requirement_names(text: str) -> set[str]:
    """Return the normalized distribution names of a requirements file's lines."""
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def undeclared(found, xml_text: str, requirements_text: str) -> list[str]:
    """Return one line per imported module that no file declares."""
    keys, pip = package_xml_depends(xml_text), requirement_names(requirements_text)
    problems = []
    for module, sites in sorted(found.items()):
        if ROSDEP_KEYS.get(module, module) in keys:
            continue
        if PIP_NAMES.get(module, module).lower().replace("_", "-") in pip:
            continue
        if module in PLATFORM:
            if not re.search(rf"\b{module}\b.*\bplatform\b", requirements_text, flags=re.S):
                problems.append(f"{module}: requirements-pip.txt must say it comes from the "
                                "platform")
            continue
        required = [f"{f}:{line}" for f, line, optional in sites if not optional]
        if module in OPTIONAL and not required:
            continue
        where = ", ".join(required or [f"{f}:{line}" for f, line, _ in sites][:3])
        problems.append(f"{module} ({where}) is declared nowhere: add its rosdep key to "
                        "package.xml, a line to requirements-pip.txt"
                        + (", or mark it OPTIONAL here" if not required else ""))
    return problems


def _package_files():
    return [p for src in SOURCES for p in sorted((ROOT / src).rglob("*.py"))]


def _texts():
    return ((ROOT / "package.xml").read_text(encoding="utf-8"),
            (ROOT / "requirements-pip.txt").read_text(encoding="utf-8"))


def test_every_third_party_import_is_declared():
    problems = undeclared(third_party_imports(_package_files()), *_texts())
    assert not problems, "\n".join(problems)


def test_declarations_are_used():
    """No stale python3-* key or pip line: each one names a module the package imports."""
    found = third_party_imports(_package_files())
    xml_text, req_text = _texts()
    python_keys = {k for k in package_xml_depends(xml_text) if k.startswith("python3-")}
    assert python_keys == {ROSDEP_KEYS[m] for m in found if m in ROSDEP_KEYS}
    pip_modules = {PIP_NAMES.get(m, m).lower() for m in found}
    assert requirement_names(req_text) <= pip_modules
    assert not set(PLATFORM) & requirement_names(req_text), "torch must not be a requirement"


def test_removing_a_declaration_fails(tmp_path):
    """The check can fail: dropping a key, a pip line or an optional mark is reported."""
    found = third_party_imports(_package_files())
    xml_text, req_text = _texts()
    assert "<exec_depend>python3-yaml</exec_depend>" in xml_text
    no_yaml = xml_text.replace("<exec_depend>python3-yaml</exec_depend>", "")
    assert [p.split()[0] for p in undeclared(found, no_yaml, req_text)] == ["yaml"]
    no_safetensors = re.sub(r"(?m)^safetensors\s*$", "", req_text)
    assert [p.split()[0] for p in undeclared(found, xml_text, no_safetensors)] == ["safetensors"]
    # An optional module imported at module level is not optional.
    eager = tmp_path / "eager.py"
    eager.write_text("import tokenizers\n\ndef f():\n    import libero\n")
    lazy = third_party_imports([eager])
    assert lazy == {"tokenizers": [("eager.py", 1, False)], "libero": [("eager.py", 4, True)]}
    assert [p.split()[0] for p in undeclared(lazy, xml_text, req_text)] == ["tokenizers"]


def test_try_except_import_error_is_optional(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("try:\n    import foo\nexcept ImportError:\n    import bar\n"
                    "try:\n    import baz\nexcept (ValueError, ModuleNotFoundError):\n    pass\n"
                    "try:\n    import qux\nexcept ValueError:\n    pass\n")
    found = third_party_imports([path])
    assert {m: sites[0][2] for m, sites in found.items()} == {
        "foo": True, "bar": False, "baz": True, "qux": False}
