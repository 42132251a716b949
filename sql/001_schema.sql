-- pgsql-broker schema, version 1: tables, indexes, roles and row-level security.
-- Installed by `pgsql-broker install` in one transaction into the first schema of search_path,
-- followed by functions.sql. Never edit a released file: add the next numbered one.

CREATE TABLE broker_queueinstance (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text        NOT NULL,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    backend_pid   integer     NOT NULL DEFAULT pg_backend_pid(),
    version       text        NOT NULL,
    status        text        NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'shutdown', 'dead')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);

-- At most one row may claim to be active; the advisory lock is what really enforces it.
CREATE UNIQUE INDEX broker_queueinstance_one_active
    ON broker_queueinstance ((true)) WHERE status = 'active';

CREATE TABLE broker_schedule (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schedule_name  text        NOT NULL,
    cron           text        NOT NULL,
    timezone       text        NOT NULL DEFAULT 'UTC',
    execute_str    text        NOT NULL,
    job_queue      integer     NOT NULL DEFAULT 1 CHECK (job_queue >= 1),
    job_priority   integer     NOT NULL DEFAULT 0,
    job_language   text        NOT NULL DEFAULT 'sql',
    run_as         name,
    user_login     text,
    owner          name        NOT NULL DEFAULT current_user,
    enabled        boolean     NOT NULL DEFAULT true,
    -- false: a due time passes without a job while the schedule's previous job is still
    -- pending or running.
    overlap        boolean     NOT NULL DEFAULT false,
    next_run       timestamptz,
    last_run       timestamptz,
    -- Why the broker disabled the schedule (bad cron or zone, job refused); NULL when fine.
    last_error     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- The broker computes fire times from these; keep them in a range it can compute with.
    CHECK (next_run BETWEEN '1970-01-01' AND '9999-12-31'),
    CHECK (last_run BETWEEN '1970-01-01' AND '9999-12-31'),
    CHECK (created_at BETWEEN '1970-01-01' AND '9999-12-31')
);

CREATE INDEX broker_schedule_next_run ON broker_schedule (next_run) WHERE enabled;

CREATE TABLE broker_jobs (
    -- ALWAYS: ids are the broker's (they order jobs of equal priority, oldest first).
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_name       text        NOT NULL DEFAULT '',
    execute_str    text        NOT NULL,
    job_queue      integer     NOT NULL DEFAULT 1 CHECK (job_queue >= 1),
    job_priority   integer     NOT NULL DEFAULT 0,
    job_language   text        NOT NULL DEFAULT 'sql',
    run_as         name,
    user_login     text,
    schedule_id    bigint      REFERENCES broker_schedule (id) ON DELETE SET NULL,
    -- The due time a schedule made this job for; NULL for jobs not made by a schedule.
    scheduled_for  timestamptz,
    owner          name        NOT NULL DEFAULT current_user,
    status         text        NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'running', 'completed', 'failed', 'cancelled')),
    error_text     text,
    -- One entry per failed attempt, oldest first: "attempt N: SQLSTATE ...".
    attempt_errors text[]      NOT NULL DEFAULT '{}',
    attempts       integer     NOT NULL DEFAULT 0,
    -- Unique per claim (from broker_claims): a worker may only start and finish the claim it
    -- holds, even if the job was recovered and claimed again meanwhile. NULL when unclaimed.
    claim          bigint,
    max_attempts   integer     NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    run_after      timestamptz NOT NULL DEFAULT now(),
    timeout        interval,
    transactional  boolean     NOT NULL DEFAULT true,
    -- Only for transactional = false: after a crash while it ran, the job is pending again
    -- instead of failed. Set it for jobs whose effects may apply twice.
    retry_on_crash boolean     NOT NULL DEFAULT false,
    -- Dependencies not yet completed; a job is claimable only at zero.
    waiting        integer     NOT NULL DEFAULT 0,
    instance_id    bigint      REFERENCES broker_queueinstance (id) ON DELETE SET NULL,
    backend_pid    integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    completed_at   timestamptz
);

CREATE SEQUENCE broker_claims;

-- The claim reads this index in order (highest priority, then oldest); waiting dependents are
-- not in it, so many of them cost the claim nothing.
CREATE INDEX broker_jobs_ready
    ON broker_jobs (job_queue, job_priority DESC, id) WHERE status = 'pending' AND waiting = 0;
CREATE INDEX broker_jobs_running
    ON broker_jobs (instance_id) WHERE status = 'running';
CREATE INDEX broker_jobs_finished
    ON broker_jobs (completed_at) WHERE status IN ('completed', 'failed', 'cancelled');
-- A due time makes at most one job, whatever goes wrong elsewhere.
CREATE UNIQUE INDEX broker_jobs_schedule_slot
    ON broker_jobs (schedule_id, scheduled_for) WHERE scheduled_for IS NOT NULL;
-- The overlap check at each firing reads only a schedule's unfinished jobs.
CREATE INDEX broker_jobs_schedule_active
    ON broker_jobs (schedule_id) WHERE schedule_id IS NOT NULL AND status IN ('pending', 'running');

-- Edges point from a job to an older one, so no cycle can ever form.
CREATE TABLE broker_job_dependencies (
    job_id      bigint NOT NULL REFERENCES broker_jobs (id) ON DELETE CASCADE,
    depends_on  bigint NOT NULL REFERENCES broker_jobs (id) ON DELETE CASCADE,
    PRIMARY KEY (job_id, depends_on),
    CHECK (depends_on < job_id)
);
CREATE INDEX broker_job_dependencies_depends_on ON broker_job_dependencies (depends_on);

-- Cancels asked for while a job runs; the worker's broker_set turns the job's failure into
-- 'cancelled'. A separate table, because the running job holds its row lock.
CREATE TABLE broker_cancel_requests (
    job_id        bigint PRIMARY KEY REFERENCES broker_jobs (id) ON DELETE CASCADE,
    requested_by  name        NOT NULL DEFAULT current_user,
    requested_at  timestamptz NOT NULL DEFAULT now()
);

-- Roles are cluster-wide: another database's install may be making them at this very moment,
-- so each step tolerates having been done already (or concurrently) and is retried.
DO $roles$
BEGIN
    FOR attempt IN 1..5 LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'broker_submitter') THEN
                CREATE ROLE broker_submitter NOLOGIN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'broker_admin') THEN
                CREATE ROLE broker_admin NOLOGIN;
            END IF;
            IF NOT pg_has_role('broker_admin', 'broker_submitter', 'MEMBER') THEN
                GRANT broker_submitter TO broker_admin;
            END IF;
            EXIT;
        EXCEPTION WHEN OTHERS THEN
            IF attempt = 5 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
END
$roles$;

-- One run_<role oid>(sql) function per job role, made on first use by broker_prepare_job.
-- Transactional jobs run inside it: a SECURITY DEFINER function owned by the job's role, where
-- PostgreSQL forbids SET ROLE, RESET ROLE and SET SESSION AUTHORIZATION.
CREATE SCHEMA broker_exec;
REVOKE ALL ON SCHEMA broker_exec FROM PUBLIC;

-- Row-level security: a submitter sees, links and cancels only its own jobs and schedules (or
-- those of roles it belongs to); broker_admin members see everything. The tables' owner (the
-- broker's login, normally) is not subject to it.
ALTER TABLE broker_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_job_dependencies ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_cancel_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_schedule ENABLE ROW LEVEL SECURITY;

CREATE POLICY broker_jobs_own ON broker_jobs
    USING (pg_has_role(current_user, owner, 'MEMBER')
           OR pg_has_role(current_user, 'broker_admin', 'MEMBER'));
CREATE POLICY broker_schedule_own ON broker_schedule
    USING (pg_has_role(current_user, owner, 'MEMBER')
           OR pg_has_role(current_user, 'broker_admin', 'MEMBER'));
CREATE POLICY broker_job_dependencies_own ON broker_job_dependencies
    USING (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id))
    WITH CHECK (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id)
                AND EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = depends_on));
CREATE POLICY broker_cancel_requests_own ON broker_cancel_requests
    USING (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id));

-- PUBLIC gets nothing; submitters get what submitting, cancelling and reading needs. What a
-- submitter may change in a job (only pending to cancelled) is the update trigger's rule.
REVOKE ALL ON broker_jobs, broker_job_dependencies, broker_cancel_requests, broker_schedule,
              broker_queueinstance FROM PUBLIC;

GRANT SELECT, INSERT ON broker_jobs TO broker_submitter;
GRANT UPDATE (status, error_text, completed_at) ON broker_jobs TO broker_submitter;
GRANT SELECT, INSERT ON broker_job_dependencies TO broker_submitter;
-- requested_by takes its default, current_user: it cannot be forged.
GRANT SELECT, INSERT (job_id) ON broker_cancel_requests TO broker_submitter;
-- What a submitter writes in a schedule; its times, owner and errors are the broker's.
GRANT SELECT, DELETE ON broker_schedule TO broker_submitter;
GRANT INSERT (schedule_name, cron, timezone, execute_str, job_queue, job_priority, job_language,
              run_as, user_login, enabled, overlap),
      UPDATE (schedule_name, cron, timezone, execute_str, job_queue, job_priority, job_language,
              run_as, user_login, enabled, overlap)
    ON broker_schedule TO broker_submitter;

GRANT SELECT, INSERT, UPDATE, DELETE ON broker_jobs, broker_job_dependencies,
      broker_cancel_requests, broker_schedule TO broker_admin;
GRANT SELECT ON broker_queueinstance TO broker_admin;
