-- pgsql-broker schema, version 2: group commit and a claim whose cost does not grow with the
-- table. Never edit a released file: add the next numbered one.

-- A pending job whose run_after is still in the future is "delayed": it stays out of the ready
-- index until the broker's poll promotes it at its due time, so many not-yet-due jobs cost a
-- claim nothing.
ALTER TABLE broker_jobs ADD COLUMN delayed boolean NOT NULL DEFAULT false;
UPDATE broker_jobs SET delayed = true WHERE status = 'pending' AND run_after > now();

DROP INDEX broker_jobs_ready;
CREATE INDEX broker_jobs_ready
    ON broker_jobs (job_queue, job_priority DESC, id)
    WHERE status = 'pending' AND waiting = 0 AND NOT delayed;
CREATE INDEX broker_jobs_delayed
    ON broker_jobs (run_after) WHERE status = 'pending' AND delayed;

-- Keyed by id: a job's completion finds its row with `id = $1 AND status = 'running'`, and
-- the planner, seeing few running rows in its statistics, picks this index for it; keyed by
-- instance it walked every running entry (dead ones included) per completion. Lookups by
-- instance read the few running rows all the same.
DROP INDEX broker_jobs_running;
CREATE INDEX broker_jobs_running ON broker_jobs (id) WHERE status = 'running';

-- Settings of the active broker that the database itself enforces (e.g. max_job_size at
-- insert). The broker writes them when it becomes active; everyone may read them.
CREATE TABLE broker_settings (
    name   text PRIMARY KEY,
    value  text NOT NULL
);
REVOKE ALL ON broker_settings FROM PUBLIC;
GRANT SELECT ON broker_settings TO PUBLIC;

-- Functions whose signatures changed; functions.sql makes them anew.
DROP FUNCTION IF EXISTS broker_get(integer, bigint, integer);
DROP FUNCTION IF EXISTS broker_run(bigint, bigint, boolean, bigint);
DROP FUNCTION IF EXISTS broker_set(bigint, bigint, text, text, bigint);
DROP FUNCTION IF EXISTS broker_prepare_job(bigint);
DROP FUNCTION IF EXISTS broker_deliver_cancels();
DROP FUNCTION IF EXISTS broker_recover(bigint, bigint[]);
DROP FUNCTION IF EXISTS broker_register_instance(text, text, integer, text, bigint[]);

-- Runners of version 1 took the job's SQL as an argument; version 2 runners read it from the
-- session. The old ones go (the schema owner may drop what is in its schema).
DO $runners$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'broker_exec'::regnamespace
    LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END
$runners$;
