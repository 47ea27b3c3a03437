"""The layer map, enforced: which subpackage may import which, and where ROS may appear.

``ALLOWED_IMPORTS`` is the map drawn in docs/layout.md (Architecture): each subpackage of
quantvla_ros lists the subpackages it may import. An import along any other edge (a back-edge
such as quant -> ros, or runtime -> workflows) fails here, so the dependency direction cannot
drift. A new subpackage fails until it is given a row here and in docs/layout.md's
Architecture table, and a line in its Layout.
"""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "quantvla_ros"
LAYOUT_DOC = ROOT / "docs" / "layout.md"

# Top to bottom: a subpackage may import only what its row lists (always layers below it).
ALLOWED_IMPORTS = {
    "cli": {"demo", "ros", "workflows", "runtime", "quant", "models", "kernels", "data", "sim"},
    "demo": {"ros", "workflows", "runtime", "data"},
    "ros": {"workflows", "runtime", "data"},
    "workflows": {"runtime", "quant", "models", "kernels", "data", "sim"},
    "training": {"runtime", "models", "data"},
    "runtime": {"quant", "models", "kernels", "data"},
    "quant": {"models", "kernels", "data"},
    "models": set(),
    "kernels": set(),
    "data": set(),
    "sim": set(),  # runs in .venv-libero too: nothing else of the package
}
# Only these subpackages may import ROS (rclpy, message packages, rosbags, launch).
ROS_SUBPACKAGES = {"ros", "demo"}
# data/ is a leaf that installs anywhere: the standard library, numpy and safetensors only.
DATA_THIRD_PARTY = {"numpy", "safetensors"}

ROS_MODULES = {
    "rclpy", "rosbags", "launch", "launch_ros", "launch_testing", "launch_testing_ros",
    "ament_index_python", "rosidl_runtime_py", "builtin_interfaces", "cv_bridge",
}


def _is_ros_module(name: str) -> bool:
    top = name.split(".")[0]
    return top in ROS_MODULES or top.endswith(("_msgs", "_srvs", "_interfaces"))


def _subpackage(path: Path, package: Path = PACKAGE) -> str | None:
    rel = path.relative_to(package)
    return rel.parts[0] if len(rel.parts) > 1 else None


def imported_modules(path: Path, root: Path = ROOT):
    """Yield (line, absolute module name) for every import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                yield node.lineno, ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.lineno, node.module
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            yield node.lineno, node.args[0].value


def layer_violations(package: Path = PACKAGE) -> list[str]:
    """Return one line per import that leaves the allowed-edges table."""
    problems, root = [], package.parent
    for path in sorted(package.rglob("*.py")):
        here = _subpackage(path, package)
        if here is None:
            continue
        if here not in ALLOWED_IMPORTS:
            problems.append(f"{path.relative_to(root)}: subpackage {here!r} has no row in "
                            "ALLOWED_IMPORTS (add it here and to docs/layout.md)")
            continue
        for lineno, module in imported_modules(path, root):
            parts = module.split(".")
            if parts[0] != "quantvla_ros" or len(parts) < 2 or parts[1] == here:
                continue
            if parts[1] not in ALLOWED_IMPORTS[here]:
                problems.append(f"{path.relative_to(root)}:{lineno}: {here} -> {parts[1]} "
                                f"(import {module}) is not an allowed edge")
    return problems


def test_imports_follow_the_layer_map():
    problems = layer_violations()
    assert not problems, "imports against the layer order:\n" + "\n".join(problems)


def test_layer_map_has_no_cycles_and_points_down():
    order = list(ALLOWED_IMPORTS)
    for layer, allowed in ALLOWED_IMPORTS.items():
        assert allowed <= set(order), (layer, allowed - set(order))
        assert all(order.index(dep) > order.index(layer) for dep in allowed), layer


def test_layering_check_catches_a_back_edge(tmp_path):
    """The check itself can fail: back-edges (absolute, relative, lazy) are all reported."""
    copy = tmp_path / "quantvla_ros"
    for sub in ("quant", "runtime", "data", "extra"):
        (copy / sub).mkdir(parents=True)
    (copy / "quant" / "bad.py").write_text("from quantvla_ros.ros.convert import to_rgb\n")
    (copy / "runtime" / "lazy.py").write_text(
        "def f():\n    from ..workflows import quantize\n")
    (copy / "data" / "fine.py").write_text("import numpy\nfrom quantvla_ros.data import x\n")
    (copy / "extra" / "new.py").write_text("")
    assert layer_violations(copy) == [
        "quantvla_ros/extra/new.py: subpackage 'extra' has no row in ALLOWED_IMPORTS (add it "
        "here and to docs/layout.md)",
        "quantvla_ros/quant/bad.py:1: quant -> ros (import quantvla_ros.ros.convert) is not "
        "an allowed edge",
        "quantvla_ros/runtime/lazy.py:2: runtime -> workflows (import "
        "quantvla_ros.workflows) is not an allowed edge",
    ]


def test_ros_imports_only_in_ros_and_demo():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if _subpackage(path) in ROS_SUBPACKAGES:
            continue
        for lineno, module in imported_modules(path):
            if _is_ros_module(module):
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: imports {module}")
    assert not offenders, (
        "ROS imports outside quantvla_ros/ros/ and demo/ (move them there):\n"
        + "\n".join(offenders)
    )


def test_data_package_needs_only_numpy_and_safetensors():
    import sys

    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    offenders = []
    for path in sorted((PACKAGE / "data").rglob("*.py")):
        for lineno, module in imported_modules(path):
            top = module.split(".")[0]
            if top not in stdlib | DATA_THIRD_PARTY | {"quantvla_ros"}:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno}: imports {module}")
    assert not offenders, "data/ must stay a numpy-only leaf:\n" + "\n".join(offenders)


def _doc_section(title: str) -> str:
    text = LAYOUT_DOC.read_text(encoding="utf-8")
    assert f"\n## {title}\n" in text, f"docs/layout.md has no '## {title}' section"
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_layout_doc_lists_every_subpackage():
    listed = set(re.findall(r"^  ([a-z_]+)/", _doc_section("Layout"), flags=re.M))
    on_disk = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert listed == on_disk == set(ALLOWED_IMPORTS), (listed, on_disk)


def architecture_table(section: str) -> dict[str, set[str]]:
    """Parse the '| `layer` | may import |' rows; 'nothing else ...' is the empty set."""
    table = {}
    for layers, allowed in re.findall(r"^\| (`[a-z_`, ]+) \| ([^|]+) \|$", section, flags=re.M):
        deps = set() if allowed.startswith("nothing") else {
            d.strip() for d in allowed.split(",")}
        for layer in re.findall(r"`([a-z_]+)`", layers):
            table[layer] = deps
    return table


def test_architecture_doc_table_is_allowed_imports():
    """The table a reader sees is the one this test enforces."""
    assert architecture_table(_doc_section("Architecture")) == ALLOWED_IMPORTS


def test_architecture_table_parser_reads_a_changed_row():
    section = ("| subpackage | may import |\n|---|---|\n| `cli` | demo, ros |\n"
               "| `models`, `data` | nothing else of the package |\n")
    assert architecture_table(section) == {"cli": {"demo", "ros"}, "models": set(),
                                           "data": set()}


# ---- the family seam ---------------------------------------------------------------------
# A family's code lives in models/<name>/, runtime/families/<name>.py (and <name>_*.py
# helpers) and quant/<name>_*.py. Everything else reaches it through the two registration
# tables, so adding a family edits no shared module.
FAMILY_TABLES = {"models/registry.py", "runtime/families/__init__.py"}
# Modules that are one family's by purpose, with the reason.
ONE_FAMILY_USERS = {
    "training": "trains our own pi0.5 policies",
    "workflows/pi_gpu_smoke.py": "pi0.5's GPU bring-up checks (attention shapes, fused ops)",
    "sim": "imports nothing of the package",
}


def family_names(package: Path = PACKAGE) -> set[str]:
    """The families: folders under models/ with a family.py."""
    return {p.parent.name for p in (package / "models").glob("*/family.py")}


def family_owning(path_or_module: str, families: set[str]) -> str | None:
    """Return the family a module (dotted or a path relative to the package) belongs to."""
    parts = path_or_module.replace("/", ".").removesuffix(".py").split(".")
    if parts and parts[0] == "quantvla_ros":
        parts = parts[1:]
    if len(parts) >= 2 and parts[0] == "models" and parts[1] in families:
        return parts[1]
    if len(parts) >= 3 and parts[:2] == ["runtime", "families"]:
        name = parts[2].split("_")[0]
        return name if name in families else None
    if len(parts) >= 2 and parts[0] == "quant":
        name = parts[1].split("_")[0]
        return name if name in families and "_" in parts[1] else None
    return None


def seam_violations(package: Path = PACKAGE) -> list[str]:
    """Imports of a family's code from shared code or from another family's code."""
    families, problems = family_names(package), []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in FAMILY_TABLES or any(rel == k or rel.startswith(k + "/")
                                       for k in ONE_FAMILY_USERS):
            continue
        owner = family_owning(rel, families)
        for lineno, module in imported_modules(path, package.parent):
            used = family_owning(module, families)
            if used is not None and used != owner:
                who = f"the {owner} family" if owner else "shared code"
                problems.append(f"{rel}:{lineno}: {who} imports {module} ({used})")
    return problems


def test_family_code_is_reached_only_through_the_tables():
    assert family_names() >= {"pi", "groot"}
    problems = seam_violations()
    assert not problems, "family code used outside its family:\n" + "\n".join(problems)


def test_seam_check_catches_a_shared_module_using_a_family(tmp_path):
    copy = tmp_path / "quantvla_ros"
    for sub in ("models/pi", "models/groot", "runtime/families", "quant"):
        (copy / sub).mkdir(parents=True)
    for fam in ("pi", "groot"):
        (copy / "models" / fam / "family.py").write_text("")
    (copy / "runtime" / "policy.py").write_text("from quantvla_ros.models.pi.config import X\n")
    (copy / "runtime" / "families" / "groot.py").write_text(
        "from quantvla_ros.quant.pi_fused import Y\nfrom quantvla_ros.models.groot import z\n")
    (copy / "models" / "registry.py").write_text("from quantvla_ros.models.pi.family import F\n")
    assert seam_violations(copy) == [
        "runtime/families/groot.py:1: the groot family imports quantvla_ros.quant.pi_fused (pi)",
        "runtime/policy.py:1: shared code imports quantvla_ros.models.pi.config (pi)",
    ]
