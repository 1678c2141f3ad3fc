"""The import graph of began_dist follows the layers docs/design.md draws.

Every module is parsed (ast, so imports inside functions count too); each import of
began_dist must go to the importer's layer or a lower one, `ray` may be imported only
where the design allows it, and no two packages may import each other
in a cycle (modules of one package and layer may). The table is read from
docs/design.md itself, so the picture and the check cannot drift apart.
"""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "began_dist")
DESIGN = os.path.join(ROOT, "docs", "design.md")
MARKER = "<!-- layers:"


def read_layers(path: str = DESIGN) -> tuple[dict[str, int], tuple[str, ...]]:
    """docs/design.md's layer block -> ({unit: layer}, units allowed to import ray)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    block = re.search(re.escape(MARKER) + r".*?\n```text\n(.*?)\n```", text, re.S)
    assert block, f"{path}: no layer block after {MARKER!r}"
    layers, ray = {}, ()
    for line in block.group(1).splitlines():
        head, *names = line.split()
        if head == "ray:":
            ray = tuple(f"began_dist.{name}" for name in names)
            continue
        for name in names:
            unit = "began_dist" if name == "__init__" else f"began_dist.{name}"
            assert unit not in layers, f"{path}: {name} is in two layers"
            layers[unit] = int(head)
    return layers, ray


def modules(package: str = PACKAGE) -> dict[str, str]:
    """Every module of began_dist: dotted name -> file."""
    found = {}
    for folder, _, files in os.walk(package):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], os.path.dirname(package)).replace(os.sep, ".")
                found[dotted.removesuffix(".__init__")] = path
    return found


def imports(path: str, module: str, known: dict[str, str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file, at any depth."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:  # `from a import b` imports module a.b when there is one
                found.append((f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base, node.lineno))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            found.append((node.args[0].value, node.lineno))
    return found


def _is_dynamic_import(node: ast.Call) -> bool:
    """importlib.import_module("...") or __import__("...") with a literal name: an import all the same."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    literal = node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
    return name in ("import_module", "__import__") and bool(literal)


def unit_of(module: str, layers: dict[str, int]) -> str | None:
    """The longest entry of the layer table that is `module` or a package holding it."""
    matches = [unit for unit in layers if module == unit or module.startswith(unit + ".")]
    matches = [unit for unit in matches if unit != "began_dist" or module == "began_dist"]
    return max(matches, key=len) if matches else None


def violations(package: str = PACKAGE, design: str = DESIGN) -> list[str]:
    """Every import against the layer order, every ray import outside its packages, every unit cycle."""
    layers, ray_units = read_layers(design)
    known = modules(package)
    problems, edges = [], {}
    for module, path in sorted(known.items()):
        unit = unit_of(module, layers)
        if unit is None:
            problems.append(f"{module}: in no layer of docs/design.md; give it one")
            continue
        where = os.path.relpath(path, ROOT)
        for target, line in imports(path, module, known):
            if target == "ray" or target.startswith("ray."):
                if not any(unit == allowed or unit.startswith(allowed + ".") for allowed in ray_units):
                    problems.append(f"{where}:{line}: {module} imports {target} (ray only in {', '.join(ray_units)})")
                continue
            if not (target == "began_dist" or target.startswith("began_dist.")):
                continue
            to = unit_of(target, layers)
            if to is None or to == unit:
                continue
            edges.setdefault(_package(unit, layers), set()).add(_package(to, layers))
            if layers[to] > layers[unit]:
                problems.append(
                    f"{where}:{line}: {module} (layer {layers[unit]}) imports {target} (layer {layers[to]})"
                )
    problems += [f"import cycle between packages: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return problems


def _package(unit: str, layers: dict[str, int]) -> str:
    """A unit's package within its layer (eval@3, eval@6, distributed@1 ...): the nodes of the cycle check.

    Imports against the order are refused above, so a cycle can only run between packages of one layer.
    """
    parts = unit.split(".")
    return f"{parts[1] if len(parts) > 1 else parts[0]}@{layers[unit]}"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of units (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group) + [sorted(group)[0]])

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_import_graph_follows_the_layers_of_docs_design():
    problems = violations()
    assert not problems, "imports against docs/design.md's layers:\n" + "\n".join(problems)


def test_config_and_train_import_nothing_above_them():
    """The two rules the design leans on most, named on their own."""
    layers, _ = read_layers()
    assert layers["began_dist.config"] == 0 and layers["began_dist.train"] > layers["began_dist.families"]
    problems = violations()
    for unit in ("config", "train"):
        assert not [p for p in problems if f" began_dist.{unit}" in p.split(" imports ")[0]], problems


@pytest.mark.parametrize(
    "where, source, expected",
    [
        ("config/validate.py", "from began_dist.eval.metrics import parse_metrics\n", "imports began_dist.eval"),
        ("models/began.py", "def f():\n    from began_dist.train import loop\n", "imports began_dist.train.loop"),
        ("families/base.py", "import began_dist.train.logging\n", ""),  # layer 1: allowed
        ("train/loop.py", "import ray.train\n", "imports ray.train (ray only in"),
        ("data/dataset.py", "from began_dist.models import began\n", "cycle between packages: data@1 -> models@1"),
    ],
)
def test_a_planted_import_is_caught(tmp_path, where, source, expected):
    """The check itself can fail: plant an import in a copy of the package and look for its complaint."""
    import shutil

    copy = tmp_path / "began_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    if where == "data/dataset.py":  # a cycle needs both directions: models -> data as well
        with open(copy / "models" / "began.py", "a") as handle:
            handle.write("\nfrom began_dist.data import dataset  # noqa\n")
    with open(copy / where, "a") as handle:
        handle.write("\n" + source)
    found = [p for p in violations(str(copy)) if where.removesuffix(".py").replace("/", ".") in p or "cycle" in p]
    if expected:
        assert any(expected in problem for problem in found), found
    else:
        assert not [p for p in found if "families.base" in p], found


MAX_FUNCTION_LINES = 60  # docs/design.md, "Sizes"
MAX_MODULE_LINES = 400


def oversized(package: str = PACKAGE) -> list[str]:
    """Every function (def line to last line, nested ones too) and module of began_dist over its limit."""
    problems = []
    for path in sorted(modules(package).values()):
        source = open(path, encoding="utf-8").read()
        where = os.path.relpath(path, os.path.dirname(package))
        if len(source.splitlines()) > MAX_MODULE_LINES:
            problems.append(f"{where}: {len(source.splitlines())} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(source, path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    limit = f"(limit {MAX_FUNCTION_LINES})"
                    problems.append(f"{where}:{node.lineno}: {node.name} is {length} lines {limit}")
    return problems


def test_no_function_over_60_lines_and_no_module_over_400():
    problems = oversized()
    assert not problems, "split these (docs/design.md, Sizes):\n" + "\n".join(problems)


def test_an_oversized_function_or_module_is_caught(tmp_path):
    """The size check itself can fail: a 61-line function and a 401-line module in a copy of the package."""
    import shutil

    copy = tmp_path / "began_dist"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))

    def function(name: str, lines: int) -> str:  # `def` line plus lines - 1 body lines
        return f"\n\ndef {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(lines - 1))

    planted = function("at_limit", MAX_FUNCTION_LINES) + function("over_limit", MAX_FUNCTION_LINES + 1)
    (copy / "images.py").write_text((copy / "images.py").read_text() + planted)
    (copy / "planted.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    found = oversized(str(copy))
    in_images = [p for p in found if "images.py" in p]  # the 60-line one passes, the 61-line one does not
    assert len(in_images) == 1 and "over_limit is 61 lines (limit 60)" in in_images[0], found
    assert any(p.startswith(os.path.join("began_dist", "planted.py")) and "401 lines" in p for p in found), found
