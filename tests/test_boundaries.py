"""The seams: farm/ never imports torch, diffusers, peft or PIL; one third-party library per seam."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "peft", "transformers", "PIL")


@pytest.mark.parametrize("module", ["farm", "farm.cli", "farm.fleet.producer", "farm.ledger", "engine", "workers.app",
                                    "workers.tasks"])
def test_importing_does_not_load_torch(module):
    code = (f"import sys, {module}; heavy = sorted(m for m in {HEAVY!r} if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


# library -> the only places in farm/ allowed to import it
SEAMS = {
    "sqlalchemy": ("farm/ledger/",),
    "alembic": ("farm/ledger/",),
    "boto3": ("farm/storage/s3.py",),
    "botocore": ("farm/storage/s3.py",),
    "click": ("farm/cli/",),
    "celery": ("farm/fleet/dispatch.py",),
    "redis": ("farm/fleet/localfarm.py",),
    "fastapi": ("farm/service/",),
    "starlette": ("farm/service/",),
    "uvicorn": ("farm/service/",),
    "httpx": ("farm/client/",),
}


def test_one_third_party_library_per_seam():
    offenders = []
    for path in sorted((ROOT / "farm").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        used = imports_of(path)
        for heavy in HEAVY:
            if heavy in used:
                offenders.append(f"{rel} imports {heavy}")
        for library, allowed in SEAMS.items():
            if library in used and not rel.startswith(allowed):
                offenders.append(f"{rel} imports {library} (only {', '.join(allowed)} may)")
    assert offenders == []


@pytest.mark.parametrize("module", ["farm", "farm.cli", "farm.api"])
def test_farm_does_not_import_the_worker_process(module):
    """The CLI and the library use the render engine on purpose (sheets, replay), never the
    Celery worker process package."""
    code = f"import sys, {module}; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'workers')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "", f"{module} imported {out.stdout.strip()}"


def test_no_static_import_of_workers_from_farm_or_engine():
    offenders = []
    for top in ("farm", "engine"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if "workers" in imports_of(path):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _lint_imports(tree: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--no-cache", "--no-logo"], cwd=tree, capture_output=True, text=True,
                          env={"PATH": str(lint.parent), "PYTHONPATH": str(tree)})


@pytest.mark.parametrize("module, bad_import, contract", [
    ("farm/jobs/spec.py", "import sqlalchemy", "the pure subpackages do no I/O"),
    ("farm/models/loras.py", "from farm.ledger import Ledger", "the pure subpackages do no I/O"),
    ("farm/cli/status.py", "from farm.ledger import Ledger", "the CLI is a thin shell"),
    ("farm/results/gallery.py", "import torch", "farm never imports"),
    ("farm/ledger/queries.py", "from farm.fleet import producer", "the library's floors"),
    ("engine/sheets.py", "import workers.handler", "the render engine never imports the worker process"),
])
def test_the_import_contracts_catch_a_bad_import(tmp_path, module, bad_import, contract):
    """lint-imports passes on the tree as it is and fails, naming the contract, on a copy of it with
    one import that crosses a layer."""
    import shutil

    for top in ("farm", "engine", "workers"):
        shutil.copytree(ROOT / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "weights", "configs"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    clean = _lint_imports(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{bad_import}  # noqa\n")
    broken = _lint_imports(tmp_path)
    assert broken.returncode != 0
    assert f"{contract}" in broken.stdout and "BROKEN" in broken.stdout
