"""The CLI's read-only fast path (issue 22): `farm status` and `farm batches list` on the default
SQLite ledger read through sqlite3, and give exactly what the ORM reads."""

import json
import subprocess
import sys
from pathlib import Path

from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.variants import PromptRow
from farm.ledger import Ledger
from farm.ledger.quick import batch_summary, recent_batches

ROOT = Path(__file__).resolve().parents[2]


def _batches(ledger, n=3):
    import random

    ids = []
    for i in range(n):
        planned = plan([PromptRow(JobRequest(prompt=f"quick {i}"))], JobRequest(), variants=i + 1, seed=i,
                       catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0))
        made = ledger.create_batch(specs=planned.specs, spec=planned.record(), request_digest=f"d{i}", base_seed=i,
                                   priority=i % 2, submitter="t", axes=planned.axes)
        ids.append(made.id)
    ledger.cancel(ids[0])
    return ids


def test_the_fast_path_reads_what_the_orm_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(url)
    ids = _batches(ledger)
    for batch in ids:
        quick = batch_summary(url, batch)
        assert quick is not None and quick is not False
        assert quick.batch == ledger.get_batch(batch) and quick.counts == ledger.batch_counts(batch)
    assert recent_batches(url, 50) == ledger.batches(50)
    assert [s.batch.id for s in recent_batches(url, 2)] == [s.batch.id for s in ledger.batches(2)]
    assert batch_summary(url, "nope") is False
    ledger.close()


def test_it_steps_aside_where_it_cannot_answer(tmp_path):
    assert batch_summary(f"sqlite:///{tmp_path / 'missing.db'}", "x") is None  # no file: nothing to read
    assert recent_batches("postgresql+psycopg://u@/db", 5) is None  # not SQLite
    url = f"sqlite:///{tmp_path / 'old.db'}"
    ledger = Ledger(url)
    _batches(ledger, 1)
    with ledger.engine.begin() as conn:  # a ledger stamped at an older revision: the full Ledger migrates it
        from sqlalchemy import text

        conn.execute(text("update alembic_version set version_num = '0013'"))
    ledger.close()
    assert recent_batches(url, 5) is None


def test_farm_status_and_batches_list_import_no_sqlalchemy(tmp_path):
    url = f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    (tmp_path / "home").mkdir()
    ledger = Ledger(url)
    [batch] = _batches(ledger, 1)
    ledger.close()
    code = ("import sys; from farm.cli import cli\n"
            "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('SQLALCHEMY' if 'sqlalchemy' in sys.modules else 'NO-SQLALCHEMY', file=sys.stderr)")
    env = {"FARM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    for args in (["status", batch, "--json"], ["batches", "list", "--json"]):
        done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, env=env)
        assert done.stderr.strip().endswith("NO-SQLALCHEMY"), done.stderr
        assert json.loads(done.stdout.strip().splitlines()[0])
