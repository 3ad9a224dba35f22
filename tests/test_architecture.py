"""The README's Architecture section as rules: each stage imports only earlier ones (lazy imports
inside functions included), no two modules import each other, and the library runs without Ray,
MLflow or the sweep schema."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kdlib"

#: stage rank by module prefix (longest prefix wins); a module may import only lower ranks, or
#: modules of its own package (``kdlib.kd.tfckd`` → ``kdlib.kd.base``) for the library stages
RANKS = {
    "kdlib": 0, "kdlib.errors": 0, "kdlib.registry": 0.5, "kdlib.validation": 0.5,
    "kdlib.config": 1,
    "kdlib.data": 2, "kdlib.models": 2, "kdlib.metrics": 2,
    "kdlib.losses": 3,
    "kdlib.kd": 4, "kdlib.data.sources": 4,
    "kdlib.evaluation": 5,
    "kdlib.train": 6,
    "kdlib.sweep": 7, "kdlib.sweep.contract": 7, "kdlib.sweep.spec": 7, "kdlib.sweep.space": 7,
    "kdlib.sweep.plan": 8, "kdlib.sweep.testsets": 8.5,
    "kdlib.report": 9,
    "kdlib.sweep.tracking": 10, "kdlib.sweep.teachers": 10, "kdlib.sweep.trial": 10,
    "kdlib.sweep.artifacts": 10.5, "kdlib.sweep.preflight": 10.5, "kdlib.sweep.listening": 10.75,
    "kdlib.sweep.teacher_tasks": 10.5,
    "kdlib.sweep.session": 11,
    "kdlib.sweep.runner": 12, "kdlib.sweep.resume": 12, "kdlib.profile": 12,
    "kdlib.cli": 13,
}
#: packages whose modules may import each other's (one stage split into files)
ONE_STAGE = ("kdlib.data", "kdlib.models", "kdlib.metrics", "kdlib.kd", "kdlib.config", "kdlib.report",
             "kdlib.train", "kdlib.data.sources")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> float:
    keys = [k for k in RANKS if module == k or module.startswith(k + ".")]
    assert keys, f"{module} has no stage in RANKS: add it (and to the README's Architecture section)"
    return RANKS[max(keys, key=len)]


def _stage(module: str) -> str:
    keys = [k for k in ONE_STAGE if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else module


def _imports() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] if node.module.startswith("kdlib") else []
                # `from kdlib.kd import baselines` imports the submodule kdlib.kd.baselines
                names += [f"{node.module}.{a.name}" for a in node.names
                          if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()]
                found.update(n for n in names if n.startswith("kdlib.") and n != module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("kdlib.") and a.name != module)
    return graph


GRAPH = _imports()


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_only_earlier_stages(module):
    late = sorted(dep for dep in GRAPH[module]
                  if _rank(dep) >= _rank(module) and _stage(dep) != _stage(module)
                  and not module.startswith(dep + "."))  # a submodule's own package __init__
    assert not late, f"{module} (stage {_rank(module)}) imports later or same-stage modules {late}"


def test_no_two_modules_import_each_other():
    cycles = sorted((a, b) for a, deps in GRAPH.items() for b in deps
                    if a < b and a in GRAPH.get(b, set()) and not (a.startswith(b + ".") or b.startswith(a + ".")))
    assert not cycles, f"import cycles: {cycles}"


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return set(out.stdout.split())


def test_the_schema_imports_no_torch_and_no_library_stage():
    loaded = _loaded_after("import kdlib.config")
    assert "torch" not in loaded and "numpy" not in loaded
    assert not {m for m in loaded if m.startswith(("kdlib.models", "kdlib.kd", "kdlib.data", "kdlib.train"))}


def test_the_library_needs_neither_ray_mlflow_nor_the_sweep_schema():
    loaded = _loaded_after("import kdlib.train, kdlib.models, kdlib.kd, kdlib.metrics, kdlib.evaluation, kdlib.data")
    assert "torch" in loaded  # the import really happened
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "mlflow")}
    assert not {m for m in loaded if m.startswith(("kdlib.config", "kdlib.sweep"))}


def test_the_plan_and_the_data_sources_run_without_ray_and_mlflow():
    # trials unpickle the plan; a GPU machine without Ray/MLflow can still plan and train
    loaded = _loaded_after("import kdlib.sweep.plan, kdlib.data.sources, kdlib.sweep.teachers")
    assert "kdlib.data.sources" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "mlflow")}


def test_the_report_imports_neither_ray_torch_nor_the_trainer():
    loaded = _loaded_after("import kdlib.report")
    assert "kdlib.report" in loaded
    assert not {m for m in loaded if m.split(".")[0] in ("ray", "torch") or m.startswith("kdlib.train")}
