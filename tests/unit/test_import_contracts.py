"""importlinter.ini holds on the real tree, and breaks, naming the contract, on a violation.

Each violation is planted in a copy of src/shop in a tmp dir; `lint-imports` runs there with
PYTHONPATH pointing at the copy (ahead of the editable install of the real tree).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "importlinter.ini"


def _lint_imports(src: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    executable = Path(sys.executable).parent / "lint-imports"
    command = [str(executable)] if executable.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "500", "NO_COLOR": "1"}
    return subprocess.run(
        [*command, "--no-cache", "--no-logo", str(CONFIG)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_real_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = _lint_imports(ROOT / "src", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


VIOLATIONS = [
    pytest.param(
        "modules/orders/_violation.py",
        "from shop.modules.catalog import models\n",
        "Bounded contexts are independent: no module imports another (talk over the bus)",
        "shop.modules.orders._violation -> shop.modules.catalog.models",
        id="module-imports-module",
    ),
    pytest.param(
        "bus/_violation.py",
        "import shop.contracts.orders\n",
        "The bus kernel imports no module, contract, gateway or composition root",
        "shop.bus._violation -> shop.contracts.orders",
        id="bus-imports-contracts",
    ),
    pytest.param(
        "contracts/_violation.py",
        "import sqlalchemy\n",
        "Contracts are the published language: shop.bus.messages and msgspec only",
        "shop.contracts._violation -> sqlalchemy",
        id="contracts-import-sqlalchemy",
    ),
    pytest.param(
        "gateway/_violation.py",
        "from shop.modules.users import models\n",
        "The gateway reaches modules over HTTP or through the app, never by import",
        "shop.gateway._violation -> shop.modules.users.models",
        id="gateway-imports-module",
    ),
    pytest.param(
        "db.py",
        "\nimport shop.migrate\n",
        "Layers: cli > app > migrate > gateway | modules > discovery | console > web, security > "
        "contracts > bus, observability > db > settings",
        "shop.db -> shop.migrate",
        id="lower-layer-imports-higher",
    ),
    pytest.param(
        "console/_violation.py",
        "import shop.gateway.problems\n",
        "Layers: cli > app > migrate > gateway | modules > discovery | console > web, security > "
        "contracts > bus, observability > db > settings",
        "shop.console._violation -> shop.gateway.problems",
        id="console-imports-gateway",
    ),
]


@pytest.mark.parametrize(("path", "code", "contract", "offence"), VIOLATIONS)
def test_a_violation_breaks_the_contract_it_names(
    tmp_path: Path, path: str, code: str, contract: str, offence: str
) -> None:
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "shop", src / "shop", ignore=shutil.ignore_patterns("__pycache__"))
    target = src / "shop" / path
    with target.open("a") as file:  # a new module, or an import appended to an existing one
        file.write(code)

    result = _lint_imports(src, tmp_path)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert f"{contract} BROKEN" in output
    assert offence in output
