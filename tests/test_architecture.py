"""Library below, commands on top: no library module imports a command module, and no peftlab modules import each
other in a circle. Read from the source with ast: every import counts, at module level or inside a function."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "peftlab"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def is_command(tree: ast.Module) -> bool:
    """A module with `if __name__ == "__main__":` at top level."""
    return any(isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
               and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"
               and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
               for node in tree.body)


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The peftlab modules `name` imports anywhere in its source: `from .x import y` imports x (and x.y when that is
    a module); `from . import x` imports x when x is a module, else the package (a name from its __init__)."""
    package = name if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").is_file() else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            inside = {f"{base}.{alias.name}" for alias in node.names}
            found |= inside & known
            if node.module or inside - known:
                found.add(base)
    return {m for m in found if m in known and m != name}


def graph() -> tuple[dict[str, set[str]], set[str]]:
    trees = modules()
    known = set(trees)
    return {name: imports(name, tree, known) for name, tree in trees.items()}, \
        {name for name, tree in trees.items() if is_command(tree)}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_commands_are_found():
    _, commands = graph()
    assert {"peftlab.run", "peftlab.predict", "peftlab.merge", "peftlab.serve", "peftlab.compare", "peftlab.report",
            "peftlab.bench"} <= commands


def test_no_library_module_imports_a_command():
    edges, commands = graph()
    wrong = sorted(f"{lib} imports {cmd}" for lib, targets in edges.items() if lib not in commands
                   for cmd in targets & commands)
    assert not wrong, "library modules import commands: " + "; ".join(wrong)


def test_no_import_cycles():
    edges, _ = graph()
    assert not cycles(edges), f"import cycles among peftlab modules: {cycles(edges)}"


def test_the_checks_see_function_level_and_relative_imports():
    """The checks themselves: an import inside a function, in `from . import x` form, is an edge."""
    tree = ast.parse("def f():\n    from . import b\n    from .c import d\n    from . import e\n")
    known = {"peftlab", "peftlab.b", "peftlab.c", "peftlab.c.d"}
    assert imports("peftlab.a", tree, known) == {"peftlab.b", "peftlab.c", "peftlab.c.d", "peftlab"}  # e: in __init__
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
