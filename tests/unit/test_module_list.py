"""The module list is decided once (`shop.settings.MODULE_NAMES`); what repeats it elsewhere is
checked against it. (The deploy files are checked by test_deploy_manifests.py.)"""

from __future__ import annotations

import configparser
from pathlib import Path

import shop
from shop import migrate
from shop.app import load_module, route_table
from shop.modules import descriptor, descriptors
from shop.settings import MODULE_NAMES

ROOT = Path(shop.__file__).resolve().parents[2]


def packages(folder: Path) -> set[str]:
    return {p.parent.name for p in folder.glob("*/__init__.py")}


def test_every_module_package_is_listed_and_every_listed_module_has_a_package() -> None:
    assert packages(ROOT / "src/shop/modules") == set(MODULE_NAMES)


def test_every_module_has_its_contracts_file_and_its_migrations() -> None:
    contracts = {p.stem for p in (ROOT / "src/shop/contracts").glob("*.py")} - {"__init__"}
    migrations = {p.parent.name for p in (ROOT / "migrations").glob("*/versions")} - {"_kernel"}

    assert contracts == set(MODULE_NAMES)
    assert migrations == set(MODULE_NAMES)


def test_the_import_contracts_keep_every_listed_module_independent() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "importlinter.ini")

    independent = config["importlinter:contract:modules-independent"]["modules"].split()

    assert independent == [f"shop.modules.{name}" for name in MODULE_NAMES]


def test_migrations_and_the_composition_root_take_each_module_from_its_descriptor() -> None:
    for name in MODULE_NAMES:
        module = descriptor(name)
        assert module.name == name
        assert load_module(name) is module
        assert migrate.module_metadata(name) is module.metadata
    assert [m.name for m in descriptors()] == list(MODULE_NAMES)
    assert tuple(route_table()) == MODULE_NAMES


def test_the_kernel_revision_is_one_file_in_every_history_under_the_ids_databases_already_hold() -> None:
    from alembic.script import ScriptDirectory

    shared = migrate.migrations_dir() / "_kernel" / "versions" / "0001_kernel.py"
    for name in MODULE_NAMES:
        scripts = ScriptDirectory.from_config(migrate.alembic_config(name))
        (base,) = [r for r in scripts.walk_revisions() if r.down_revision is None]
        assert (base.revision, base.branch_labels) == (f"{name}_0001", {name})
        assert base.path is not None
        assert Path(base.path).resolve() == shared.resolve()
        assert not list((migrate.migrations_dir() / name).glob("**/*kernel*.py"))
