"""docs/extending.md's recipe for a new module, followed to the letter in a copy of the tree: a
sixth module, `reviews`, whose migration runs, whose messages round-trip on the bus, and which
the import contracts, the module-list checks and the contracts snapshot cover."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import shop

ROOT = Path(shop.__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"
BIN = Path(sys.executable).parent
FILE_BLOCK = re.compile(r'```python title="([^"]+)"\n(.*?)```', re.S)
MODULE_LIST = re.compile(r"^MODULE_NAMES: tuple\[str, \.\.\.\] = .*$", re.M)
COPIED = ("src", "migrations", "docs", "importlinter.ini", "pyproject.toml", "tests/conftest.py",
          "tests/contracts", "tests/unit/test_module_list.py")  # fmt: skip


class Tree:
    """The copy, and commands run in it (its `src` first on the path)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.env = {
            **os.environ,
            "PYTHONPATH": str(path / "src"),
            "SHOP_DATA_DIR": str(path / "var"),
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        for name in [k for k in self.env if k.startswith("SHOP_") and k != "SHOP_DATA_DIR"]:
            del self.env[name]

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            command, cwd=self.path, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} -> {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def shop(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "shop"), *args, check=check)

    def python(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(sys.executable, *args, check=check)


def follow_the_recipe(tree: Path) -> None:
    doc = DOC.read_text()
    # 1. the module list
    (new_list,) = MODULE_LIST.findall(doc)
    settings = tree / "src/shop/settings.py"
    settings.write_text(MODULE_LIST.sub(lambda _: new_list, settings.read_text(), count=1))
    # 2, 3. every file the page shows
    blocks = FILE_BLOCK.findall(doc)
    assert len(blocks) >= 4, "the page shows the contracts, models, handlers and descriptor"
    for name, text in blocks:
        (tree / name).parent.mkdir(parents=True, exist_ok=True)
        (tree / name).write_text(text)
    # 4. the import contracts
    ini = tree / "importlinter.ini"
    text = ini.read_text()
    assert "    shop.modules.delivery\n" in text
    ini.write_text(
        text.replace(
            "    shop.modules.delivery\n", "    shop.modules.delivery\n    shop.modules.reviews\n", 1
        )
    )
    # 5. its migrations folder (the commands run in the tests)
    (tree / "migrations/reviews/versions").mkdir(parents=True)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    path = tmp_path_factory.mktemp("sixth") / "shop"
    for part in COPIED:
        source, target = ROOT / part, path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    follow_the_recipe(path)
    copy = Tree(path)
    drafted = copy.shop("migrate", "revision", "reviews", "-m", "reviews")
    assert "migrations/reviews/versions/0002_reviews.py" in drafted.stdout + drafted.stderr
    return copy


def test_the_new_modules_migration_runs_after_the_shared_kernel_revision(tree: Tree) -> None:
    draft = (tree.path / "migrations/reviews/versions/0002_reviews.py").read_text()
    assert "Revises: reviews_0001" in draft  # the shared kernel revision, in reviews' history
    assert "op.create_table(" in draft
    assert "schema=schema()" in draft

    migrated = tree.shop("migrate", "reviews")
    status = tree.shop("migrate", "status", "reviews")

    assert "reviews: base -> reviews_0002" in migrated.stdout
    assert status.stdout.splitlines()[1].split() == [
        "reviews",
        "reviews_0002",
        "reviews_0002",
        "up",
        "to",
        "date",
    ]


ROUND_TRIP = """
import asyncio, json, uuid
from shop.bus.bus import Bus
from shop.bus.messages import decode_body, new_envelope
from shop.bus.transports.inprocess import InProcessTransport
from shop.contracts.reviews import ListReviews, PostReview
from shop.db import Database
from shop.modules import descriptor
from shop.settings import Settings

async def main():
    settings = Settings.from_env()
    database = Database("reviews", settings.database_url_for("reviews"))
    databases = {"reviews": database}
    bus = Bus([descriptor("reviews")], InProcessTransport(), local=["reviews"], databases=databases)
    await bus.start()
    product = uuid.uuid4()
    post = PostReview(review_id=uuid.uuid4(), product_id=product, rating=4, text="fine tea")
    envelope = new_envelope(post)
    posted = await bus.ask(post)
    refused = await bus.ask(PostReview(review_id=uuid.uuid4(), product_id=product, rating=9))
    listed = await bus.ask(ListReviews(product_id=product))
    await bus.stop()
    await database.dispose()
    print(json.dumps({
        "type": envelope.type,
        "decoded": decode_body(envelope.type, envelope.body) == post,
        "posted": [posted.id == post.review_id, posted.rating],
        "refused": refused.code,
        "listed": [[r.id == post.review_id, r.text] for r in listed],
    }))

asyncio.run(main())
"""


def test_a_message_of_the_new_module_round_trips_on_the_bus(tree: Tree) -> None:
    import json

    tree.shop("migrate", "reviews")

    out = json.loads(tree.python("-c", ROUND_TRIP).stdout.splitlines()[-1])

    assert out == {
        "type": "reviews.PostReview.v1",
        "decoded": True,
        "posted": [True, 4],
        "refused": "INVALID",
        "listed": [[True, "fine tea"]],
    }


def test_the_import_contracts_hold_and_cover_the_new_module(tree: Tree) -> None:
    lint = [str(BIN / "lint-imports"), "--no-logo", "importlinter.ini"]
    assert "0 broken" in tree.run(*lint).stdout

    handlers = tree.path / "src/shop/modules/reviews/handlers.py"
    kept = handlers.read_text()
    handlers.write_text(kept + "\nfrom shop.modules.catalog import models as catalog_models  # noqa\n")
    try:
        broken = tree.run(*lint, check=False)
    finally:
        handlers.write_text(kept)

    assert broken.returncode != 0
    assert "shop.modules.reviews.handlers -> shop.modules.catalog" in broken.stdout


def test_the_module_list_checks_pass_with_six_modules(tree: Tree) -> None:
    done = tree.python("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/unit/test_module_list.py")

    assert " passed" in done.stdout


def test_the_contracts_snapshot_asks_for_the_new_messages_then_records_them(tree: Tree) -> None:
    stale = tree.python("-m", "tests.contracts.snapshot", check=False)
    assert stale.returncode == 1
    assert "is not current" in stale.stderr

    tree.python("-m", "tests.contracts.snapshot", "--write")

    recorded = (tree.path / "tests/contracts/snapshot.json").read_text()
    assert all(f'"reviews.{name}.v1"' in recorded for name in ("PostReview", "ListReviews", "ReviewPosted"))
    assert tree.python("-m", "tests.contracts.snapshot").returncode == 0
