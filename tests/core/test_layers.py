"""The floors of the house, checked by an AST import scan (no dependency).

Order, lowest first: core -> preprocess -> recmodel -> data_gen -> src -> discriminator -> bench.
A module may import its own floor or a lower one, never a higher one, and no module
imports another stage's entry module (stages meet through files and ``core.registry``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: the floors, lowest first
LAYERS = ("core", "preprocess", "recmodel", "data_gen", "src", "discriminator", "bench")

#: stage entry modules (each has a main() run by `python -m`): nothing else may import them
ENTRY_MODULES = frozenset({
    "preprocess.__main__", "preprocess.fetch",
    "recmodel.train", "recmodel.infer", "recmodel.baselines",
    "data_gen.__main__",
    "src.train", "src.merge", "src.infer_alignment", "src.infer_explan", "src.eval_explan", "src.report",
    "src.case_study", "src.ablation", "src.replay", "src.pipeline_plan", "src.show_config", "src.fetch_models",
    "src.seeds", "src.deadline",
    "discriminator.data_gen", "discriminator.run_cls", "discriminator.run_reg",
})

#: modules with a main() that are libraries first: preprocess.synthetic writes the synthetic
#: raw dataset for preprocess.build / preprocess.fetch; its CLI is a convenience, not a stage
LIBRARY_WITH_CLI = frozenset({"preprocess.synthetic"})

#: (importer, entry module) pairs that are allowed on purpose: src.ablation is the Figure 7
#: orchestrator that runs training and evaluation in-process, once per variant
ALLOWED_ENTRY_IMPORTS = frozenset({
    ("src.ablation", "src.train"),
    ("src.ablation", "src.infer_alignment"),
})
#: bench/ measures the stages' own functions, so it may import any entry module
ENTRY_IMPORTS_FREE = ("bench",)


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            out[".".join(path.relative_to(root).with_suffix("").parts)] = path
    return out


def _imports(path: Path, module: str) -> list[tuple[int, str, bool]]:
    """(line, imported module, is a `from X import name` name) for every import in the file,
    lazy ones inside functions too."""
    out: list[tuple[int, str, bool]] = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against the package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.append((node.lineno, base, False))
            out += [(node.lineno, f"{base}.{a.name}", True) for a in node.names]  # `from pkg import mod`
    return out


def violations(root: Path = REPO) -> list[str]:
    mods = _modules(root)
    rank = {name: k for k, name in enumerate(LAYERS)}
    found: list[str] = []
    for mod, path in mods.items():
        layer = mod.split(".")[0]
        for line, target, is_name in _imports(path, mod):
            top = target.split(".")[0]
            where = f"{path.relative_to(root)}:{line}"
            if not is_name and top in rank and rank[top] > rank[layer]:
                found.append(f"{where}: {mod} ({layer}) imports {target} from a higher floor ({top})")
            if (target in ENTRY_MODULES and target != mod and layer not in ENTRY_IMPORTS_FREE
                    and (mod, target) not in ALLOWED_ENTRY_IMPORTS):
                found.append(f"{where}: {mod} imports the stage entry module {target}")
    return sorted(set(found))


def test_every_import_stays_on_its_floor_or_below():
    assert violations() == []


def test_entry_module_list_is_complete():
    """Every module with `if __name__ == "__main__"` is listed (bench/ scripts are exempt)."""
    mods = _modules(REPO)
    entries = {m for m, p in mods.items() if '__name__ == "__main__"' in p.read_text(encoding="utf-8")
               and m.split(".")[0] not in ENTRY_IMPORTS_FREE} - LIBRARY_WITH_CLI
    assert entries | {"preprocess.__main__", "data_gen.__main__"} == set(ENTRY_MODULES)


def test_registry_floor_imports_no_stage():
    """core/ is the ground floor: it imports nothing of the project but itself."""
    for mod, path in _modules(REPO).items():
        if mod.startswith("core."):
            tops = {t.split(".")[0] for _, t, _ in _imports(path, mod)}
            assert not tops & (set(LAYERS) - {"core"}), (mod, tops)


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for layer in LAYERS:
        shutil.copytree(REPO / layer, root / layer, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.mark.parametrize("victim, line, expected", [
    # upward: the ground floor reaching into the LLM side
    ("core/metrics.py", "from src.model import TASK_TYPES\n", "imports src.model from a higher floor"),
    # upward: the recommender importing the alignment data generator (lazily, inside a function)
    ("recmodel/data.py", "def _bad():\n    import data_gen.pipeline\n", "imports data_gen.pipeline from a higher floor"),
    # sideways into a stage entry module
    ("discriminator/run_cls.py", "from src.infer_explan import explain_file\n", "imports the stage entry module src.infer_explan"),
    ("src/report_md.py", "from src import train\n", "imports the stage entry module src.train"),
])
def test_a_wrong_import_fails(tmp_path, victim, line, expected):
    root = _copy_tree(tmp_path)
    assert violations(root) == []
    path = root / victim
    path.write_text(path.read_text(encoding="utf-8") + "\n\n" + line, encoding="utf-8")
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found
    # and the test itself fails on it, run as pytest would run it
    test = tmp_path / "test_copy.py"
    test.write_text(
        f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom pathlib import Path\n"
        f"from tests.core import test_layers\n\ndef test_it():\n    assert test_layers.violations(Path({str(root)!r})) == []\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1 and expected in res.stdout, res.stdout[-2000:]
