"""Schemathesis against a served `shop run`: the OpenAPI document is the truth.

Every check but positive-data acceptance (cursors are opaque: a schema-valid string is not a
cursor of ours, and the app rightly refuses it), every phase (examples, coverage, fuzzing and
the stateful phase, which chains operations through the links it infers), once as an admin and
once as a customer so the guarded routes are exercised past their 401/403. Deterministic
(fixed seed, one worker) and bounded (max examples per operation, a timeout).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from .served import ROOT, served_shop

pytestmark = pytest.mark.e2e

ST = ROOT / ".venv" / "bin" / "st"
SEED = 20261205
MAX_EXAMPLES = 25
RUN_DEADLINE_S = 240


@pytest.mark.timeout(600)
@pytest.mark.parametrize("role", ["admin", "customer"])
def test_schemathesis_finds_no_failure(tmp_path: Path, role: str) -> None:
    # Generous limits: a 429 is documented, but it would stop the run from reaching the handlers.
    with served_shop(tmp_path, RATE_LIMIT="100000/second", LOGIN_RATE_LIMIT="100000/minute") as shop:
        token = shop.admin_token() if role == "admin" else shop.customer_token("schemathesis@example.com")
        command = [
            str(ST),
            "run",
            f"{shop.base_url}/schema/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            str(SEED),
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "30",
            "--no-color",
        ]
        started = time.monotonic()
        result = subprocess.run(
            command, cwd=tmp_path, capture_output=True, text=True, timeout=RUN_DEADLINE_S, check=False
        )
        elapsed = time.monotonic() - started
        summary = result.stdout[result.stdout.rfind("SUMMARY") :] if "SUMMARY" in result.stdout else ""
        print(f"schemathesis as {role}: exit {result.returncode} in {elapsed:.1f} s\n{summary}")
        assert result.returncode == 0, (
            f"schemathesis found failures as {role}:\n{result.stdout[-20000:]}\n{result.stderr[-2000:]}"
            f"\nshop stderr:\n{shop.tail()}"
        )
        assert "✅ Stateful" in summary, summary
