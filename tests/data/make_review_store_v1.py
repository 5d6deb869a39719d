"""How tests/data/review_store_v1.sqlite was made: by the schema-1 ReviewStore itself.

    git show cb91b78:tracin_core/review.py > /tmp/v1/review_v1.py
    cp tests/data/make_review_store_v1.py /tmp/v1/ && cd /tmp/v1
    python make_review_store_v1.py <repo>/tests/data/review_store_v1.sqlite

(cb91b78 is the last commit with schema version 1.) The file is then checkpointed into a
single file (journal mode DELETE). tests/test_review_store.py upgrades a copy of it.
"""
import sqlite3
import sys
from pathlib import Path
import review_v1 as r
assert r.SCHEMA_VERSION == 1
out = Path(sys.argv[1])
out.unlink(missing_ok=True)
s = r.ReviewStore(out, workspace="ws", data_hash="h1")
s.record(0, "ann", "accept", given_label=0, ranking="neighbour_vote", score=2.5)
s.record(1, "ann", "relabel", 7, given_label=1)
s.record(2, "ann", "exclude", given_label=2)
s.record(3, "ann", "skip", given_label=3)
s.record(4, "ann", "accept", given_label=4)
s.record(4, "bob", "relabel", 9, given_label=4)      # conflict
s.record(5, "bob", "exclude", given_label=5)
s.undo(5, "bob")                                      # nothing left on 5
s.record(6, "ann", "relabel", 2, given_label=6)
s.record(6, "ann", "accept", given_label=6)
s.undo(6, "ann")                                      # back to the relabel
s.record(7, "ann", "accept", given_label=7)
s.record(7, "bob", "exclude", given_label=7)
s.record(7, "carol", "adjudicate", 3)                 # adjudicated
s.claim_next("ann", [8, 9])
other = r.ReviewStore(out, workspace="ws", data_hash="h0")
other.record(0, "ann", "exclude", given_label=0)
s.close()
other.close()
conn = sqlite3.connect(out)
conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
conn.execute("PRAGMA journal_mode = DELETE")
conn.close()
print(out.stat().st_size)
