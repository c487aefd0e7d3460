"""The house rules that a reader relies on: data flows one way (kernels are leaves, the tuner sits
between them and the op layer, nothing imports upward), and the README's layout table names
every source file of the tree and nothing that is not there."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# directory in the repo -> the package it installs as
PACKAGES = {"kernels": "kernels", "autotune": "autotune", "triton_qat": "core"}
ALLOWED = {"core": {"core", "autotune", "kernels"}, "autotune": {"autotune", "kernels"},
           "kernels": {"kernels"}}  # fmt: skip


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "triton_qat":
        return None
    if len(parts) > 1 and parts[1] in ("kernels", "autotune"):
        return parts[1]
    return "core"


def _imports(path: Path, package: str) -> set[str]:
    """Packages of triton_qat that ``path`` imports (relative imports stay in its package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_package_of(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level:
            found.add(package)
        elif isinstance(node, ast.ImportFrom):  # `from triton_qat import autotune` names one
            module = node.module or ""
            found |= {_package_of(f"{module}.{a.name}") for a in node.names}
    return found - {None}


def test_imports_flow_one_way():
    edges = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            for target in _imports(path, package):
                edges.setdefault((package, target), []).append(path.name)
                assert target in ALLOWED[package], (
                    f"{folder}/{path.name} imports triton_qat's {target} package"
                )
    # the graph core -> autotune -> kernels has no cycle; and each arrow is really used
    assert ("core", "autotune") in edges and ("autotune", "kernels") in edges


def test_launchers_take_their_config():
    """No launcher looks a config up: ``config`` is a required keyword of every launcher."""
    import inspect

    from triton_qat.kernels import gemm_backward, gemm_int8, quantize

    for fn in (quantize.quantize_rows, gemm_int8.int8_linear, gemm_backward.dgrad,
               gemm_backward.wgrad):  # fmt: skip
        param = inspect.signature(fn).parameters["config"]
        assert param.kind is param.KEYWORD_ONLY and param.default is param.empty, fn.__name__


def test_readme_layout_table_matches_the_tree():
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./*-]+)`", table))
    for name in named:
        if "/" in name or name.endswith((".py", ".md")):
            matches = list(ROOT.glob(name)) or list(ROOT.glob(f"*/{name}"))
            assert matches, f"README layout names {name!r}, which is not in the tree"
    for folder in ("kernels", "autotune", "triton_qat", "perf"):
        for path in (ROOT / folder).glob("*.py"):
            if path.name.startswith("_"):
                continue
            assert path.name in named or f"{folder}/{path.name}" in named, (
                f"{folder}/{path.name} is missing from the README's layout table"
            )


def test_no_module_imports_the_source_folders_by_their_repo_names():
    """``kernels`` and ``autotune`` install as ``triton_qat.kernels`` / ``triton_qat.autotune``: an
    absolute ``from kernels import ...`` only works from the repo root (it broke ``import
    triton_qat`` anywhere else once)."""
    bad = []
    for folder in PACKAGES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and not node.level else [])  # fmt: skip
                bad += [f"{path.relative_to(ROOT)}: {n}" for n in names
                        if n and n.split(".")[0] in ("kernels", "autotune")]  # fmt: skip
    assert not bad, bad
