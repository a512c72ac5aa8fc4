"""The lifecycle rules: the state machines as data, the only writer of state columns, and
the one way an asset becomes ``deleted``.

machines.py     ASSET, VARIANT, UPLOAD_SESSION (and the ledger's JOB): edges and named groups
transitions.py  transition / walk / transition_many / insert / insert_many
tombstone.py    tombstone(): lock, re-check, mark deleted, stage the purge; release_at_commit
"""
