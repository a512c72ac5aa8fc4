"""The job ledger: background effects as rows, relayed to arq after commit.

kinds.py   JobKind, the built-in kinds with their argument structs, and the schedules
stage.py   stage_promote / stage_render / stage_purge: the dedupe keys, in one place
relay.py   Ledger (stage, flush, reconcile, summary) and the Relay that runs it
runner.py  JobRun and run_job: one attempt inside arq
"""
