-- rindle_async schema, version 3: which worker ran each attempt (see liveness.py), so an
-- attempt that died with its worker names it, and `status` can show who runs what.
-- __SCHEMA__ is replaced by the configured schema name (default "rindle").

ALTER TABLE __SCHEMA__.processing_runs ADD COLUMN worker text;
