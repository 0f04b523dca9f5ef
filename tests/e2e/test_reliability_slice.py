"""The fast slice of the reliability suite (docs/reliability.md), run with the e2e tier.

The quick rows of the fault matrix (bench.faults.QUICK: claude killed mid-turn, upstream errors,
a stalled upstream, a client leaving a stream, overload, a missing or broken claude binary) and
200 seeded fuzz cases (bench.fuzz), called as functions against daemons of their own. A failure
names the row, or the fuzz case with the command that replays it.
"""

from __future__ import annotations

import pytest

from bench import faults, fuzz
from bench import reliability as rel

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Seconds for the pool to be healthy again after a fault. The scripts' target is 2 s; a row
# whose fault lands within a spawn time of its turn's start also waits for the replacement
# claude, and CI shares two cores with other tests, so the slice allows more.
CI_TARGET = 5.0
FUZZ_SEED = 7
FUZZ_CASES = 200


def assert_rows(report: faults.Report) -> None:
    failed = [
        f"{r.scenario}: expected {r.expected}, got {r.actual}"
        f" (healthy again after {rel.secs(r.recover)}; {r.note})"
        for r in report.rows
        if not r.passed
    ]
    assert report.rows and not failed, "\n".join(failed)
    assert report.orphans == []
    assert report.facts is not None
    assert report.facts.leftovers == []


@pytest.mark.timeout(300)
async def test_fault_matrix_quick_rows() -> None:
    assert_rows(await faults.run_matrix(faults.QUICK, target=CI_TARGET))


@pytest.mark.timeout(240)
async def test_fuzz_cases() -> None:
    result = await fuzz.run(
        FUZZ_CASES, seed=FUZZ_SEED, concurrency=4, timeout=60, check_every=FUZZ_CASES // 2
    )
    tally: fuzz.Tally = result["tally"]
    bugs = [
        f"case {k} ({category}): {cls}: {detail}; replay: .venv/bin/python -m bench.fuzz "
        f"--seed {FUZZ_SEED} --case {k}"
        for k, category, cls, detail in tally.bugs
    ]
    assert not bugs, "\n".join(bugs)
    assert all(good for _, good, _, _ in tally.checks), tally.checks
    assert result["alive"]
    assert result["orphans"] == []
    assert result["facts"].leftovers == []
