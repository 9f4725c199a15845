"""The package's layout rules, checked on the source: layers import downwards only, no cycles, no
private imports across packages, no test helper in production code, small modules, a complete API."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import aligner_chains

PACKAGE = Path(aligner_chains.__file__).resolve().parent

# Lower number = lower layer; a module may import its own layer's package or lower ones
# (see the map in docs/development.md).
LAYERS: dict[str, int] = {
    "_lazy": 0,
    "demo": 0,
    "core": 1,
    "backends": 2,
    "jobs": 3,
    "finetune": 4,
    "evaluate": 5,
    "synthesize": 6,
    "langchain": 7,
    "llama_index": 7,
    "bulk": 7,
    "server": 8,
    "cli": 9,
}
# The only upward imports: the facade's constructors (`Aligner.from_pretrained`, `Aligner.from_server`) build
# their backend on call, importing it inside the method, so importing the core imports neither backend.
UPWARD_ON_CALL = {
    ("aligner_chains.core.aligner", "aligner_chains.backends.local"),
    ("aligner_chains.core.aligner", "aligner_chains.backends.remote"),
}
# Modules over this many lines must say why here.
MAX_LINES = 600
LONG_MODULES: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path, *, top_level_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``aligner_chains`` import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if top_level_only and isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "aligner_chains":
            # The top-level package re-exports: count each name as an import of where it lives.
            lazy = aligner_chains._LAZY_EXPORTS
            found += [(lazy.get(a.name, "aligner_chains.core"), [a.name], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("aligner_chains"):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("aligner_chains")]
    return found


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _is_test_helper(module: str) -> bool:
    return module.split(".")[-1] == "testing"


def test_layers_import_downwards_only() -> None:
    wrong = []
    for module, path in MODULES.items():
        source = _package(module)
        if source is None or _is_test_helper(module):  # the top-level lazy exports and test helpers see all
            continue
        assert source in LAYERS, f"{module}: add its package {source!r} to LAYERS and the map in docs/development.md"
        top_level = {target for target, _n, _l in _imports(path, top_level_only=True)}
        for target, _names, line in _imports(path):
            dest = _package(target)
            if dest is None or dest == source or _is_test_helper(target):
                continue  # test helpers in production code are caught by their own test
            if (module, target) in UPWARD_ON_CALL and target not in top_level:
                continue
            if LAYERS[dest] >= LAYERS[source]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({source}) imports {target} ({dest})")
    assert not wrong, "\n".join(wrong)


def test_documented_map_names_every_layer() -> None:
    """docs/development.md's map of the repository lists every package of `LAYERS`, top layer first."""
    page = (PACKAGE.parent / "docs" / "development.md").read_text(encoding="utf-8")
    table = page[page.index("| folder | what lives there |") :]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    position = {}
    for name in (n for n in LAYERS if not n.startswith("_")):
        found = [i for i, row in enumerate(rows) if f"{name}/`" in row or f"{name}.py`" in row]
        assert found, f"docs/development.md's map has no row for aligner_chains/{name}"
        position[name] = found[0]
    for upper, lower in ((u, v) for u in position for v in position if LAYERS[u] > LAYERS[v]):
        assert position[upper] <= position[lower], f"the map lists {lower} above {upper}, which imports it"


def test_backends_do_not_import_each_other() -> None:
    wrong = []
    for module, path in MODULES.items():
        for side, other in (("local", "remote"), ("remote", "local")):
            if module.startswith(f"aligner_chains.backends.{side}"):
                wrong += [
                    f"{module}:{line} imports {target}"
                    for target, _n, line in _imports(path)
                    if target.startswith(f"aligner_chains.backends.{other}")
                ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = {
        module: {target for target, _n, _l in _imports(path, top_level_only=True) if target in MODULES}
        for module, path in MODULES.items()
    }
    # `from package import name` may name a submodule: follow it too.
    for module, path in MODULES.items():
        for target, names, _line in _imports(path, top_level_only=True):
            graph[module] |= {f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == node or (node.startswith(nxt + ".") and nxt in stack):
                continue  # a package's own submodule importing it back is Python's normal order
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt] if nxt in stack else [node, nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_no_private_import_across_modules() -> None:
    wrong = []
    for module, path in MODULES.items():
        if _is_test_helper(module):
            continue
        for target, names, line in _imports(path):
            private_module = any(part.startswith("_") and part != "__init__" for part in target.split(".")[1:])
            private_names = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if target == "aligner_chains._lazy":
                private_module = False
            if private_module or private_names:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} {private_names or ''}")
    assert not wrong, "\n".join(wrong)


def test_production_code_imports_no_test_helper() -> None:
    wrong = [
        f"{module}:{line} imports {target}"
        for module, path in MODULES.items()
        if not _is_test_helper(module)
        for target, _names, line in _imports(path)
        if _is_test_helper(target)
    ]
    assert not wrong, "\n".join(wrong)


def test_modules_are_small() -> None:
    long = {
        module: n
        for module, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES and module not in LONG_MODULES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}; split them by subject (or say why in LONG_MODULES)"


def _fresh_python(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"HF_HUB_OFFLINE": "1"}
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


HEAVY = ("torch", "transformers", "langchain_core", "llama_index", "fastapi")


def test_import_leaves_heavy_packages_out() -> None:
    loaded = _fresh_python(
        f"import json, sys, aligner_chains; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    assert loaded == []


def test_remote_aligner_leaves_torch_and_transformers_out() -> None:
    code = f"""
import json, sys
import httpx
from aligner_chains import Aligner

def reply(request):
    if request.url.path == "/v1/models":
        return httpx.Response(200, json={{"data": [{{"id": "served", "max_model_len": 4096}}]}})
    if request.url.path == "/tokenize":
        return httpx.Response(200, json={{"count": 7}})
    return httpx.Response(200, json={{"choices": [{{"text": " Fixed.", "finish_reason": "stop"}}],
                                      "usage": {{"prompt_tokens": 9, "completion_tokens": 3}}}})

client = httpx.Client(transport=httpx.MockTransport(reply), base_url="http://127.0.0.1:9")
aligner = Aligner.from_server("http://127.0.0.1:9", template="aligner-v2", backend_options={{"http_client": client}})
result = aligner.correct("Q?", "Broken.")
print(json.dumps({{"corrected": result.corrected, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    out = _fresh_python(code)
    assert out == {"corrected": "Fixed.", "heavy": []}


def test_public_api_is_complete() -> None:
    listed = set(aligner_chains.__all__)
    assert listed <= set(dir(aligner_chains))
    for name in listed:
        assert getattr(aligner_chains, name) is not None, name
    for name in ("AlignerRunnable", "AlignerQueryEngine", "LocalBackend", "RemoteBackend", "load_model"):
        assert name in listed
    public_core = {n for n in vars(aligner_chains.core) if not n.startswith("_")} - {"aligner", "errors"}
    missing = {n for n in public_core if not isinstance(getattr(aligner_chains.core, n), type(sys))} - listed
    assert not missing, f"names aligner_chains.core exposes but aligner_chains does not export: {missing}"


@pytest.mark.parametrize("package", ["backends", "langchain", "llama_index", "finetune", "server", "bulk"])
def test_subpackage_dir_lists_lazy_exports(package: str) -> None:
    module = __import__(f"aligner_chains.{package}", fromlist=["_"])
    exported = set(getattr(module, "__all__", ()))
    assert exported, f"aligner_chains.{package} has no __all__"
    assert exported <= set(dir(module))
