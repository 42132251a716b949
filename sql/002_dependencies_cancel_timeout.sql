-- pgsql-broker schema, version 2: dependencies, cancel, timeouts, per-attempt errors, retention.

ALTER TABLE broker_jobs
    -- Dependencies not yet completed; a job is claimable only at zero.
    ADD COLUMN waiting        integer NOT NULL DEFAULT 0,
    -- One entry per failed attempt, oldest first: "attempt N: SQLSTATE ...".
    ADD COLUMN attempt_errors text[]  NOT NULL DEFAULT '{}';

-- The claim's index leaves waiting dependents out, so many of them cost the claim nothing.
DROP INDEX broker_jobs_pending;
CREATE INDEX broker_jobs_ready
    ON broker_jobs (job_queue, job_priority DESC, id) WHERE status = 'pending' AND waiting = 0;
CREATE INDEX broker_jobs_finished
    ON broker_jobs (completed_at) WHERE status IN ('completed', 'failed', 'cancelled');

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

-- Keeps `waiting` right whoever adds an edge, and settles a job whose dependency already ended.
CREATE FUNCTION broker_job_dependencies_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    dep_status text;
BEGIN
    SELECT status INTO dep_status FROM broker_jobs WHERE id = NEW.depends_on;
    IF dep_status IN ('failed', 'cancelled') THEN
        UPDATE broker_jobs
           SET status = 'cancelled', completed_at = now(),
               error_text = format('dependency %s %s', NEW.depends_on, dep_status)
         WHERE id = NEW.job_id AND status = 'pending';
    ELSIF dep_status IS DISTINCT FROM 'completed' THEN
        UPDATE broker_jobs SET waiting = waiting + 1 WHERE id = NEW.job_id;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER broker_job_dependencies_insert
    AFTER INSERT ON broker_job_dependencies
    FOR EACH ROW EXECUTE FUNCTION broker_job_dependencies_insert();

-- When a job ends, its dependents move on: one less to wait for, or cancelled with the reason.
-- Cancelling a dependent fires this again for its own dependents, so it is transitive.
CREATE FUNCTION broker_jobs_after_end() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'completed' THEN
        UPDATE broker_jobs j SET waiting = j.waiting - 1
          FROM broker_job_dependencies d
         WHERE d.depends_on = NEW.id AND j.id = d.job_id AND j.status = 'pending';
        PERFORM pg_notify('broker_jobs', q.job_queue::text)
           FROM (SELECT DISTINCT j.job_queue FROM broker_jobs j
                   JOIN broker_job_dependencies d ON d.job_id = j.id
                  WHERE d.depends_on = NEW.id AND j.status = 'pending' AND j.waiting = 0) q;
    ELSE
        UPDATE broker_jobs j
           SET status = 'cancelled', completed_at = now(),
               error_text = format('dependency %s %s', NEW.id, NEW.status)
          FROM broker_job_dependencies d
         WHERE d.depends_on = NEW.id AND j.id = d.job_id AND j.status = 'pending';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER broker_jobs_after_end
    AFTER UPDATE OF status ON broker_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION broker_jobs_after_end();

-- The seed's eight positional parameters, then named extras. depends_on is new and last, so
-- every earlier call keeps its meaning.
DROP FUNCTION broker_add_job(text, text, integer, integer, text, name, text, bigint,
                             timestamptz, integer, interval, boolean);
CREATE FUNCTION broker_add_job(
    job_name      text,
    execute_str   text,
    job_queue     integer     DEFAULT 1,
    job_priority  integer     DEFAULT 0,
    job_language  text        DEFAULT 'sql',
    run_as        name        DEFAULT NULL,
    user_login    text        DEFAULT NULL,
    schedule_id   bigint      DEFAULT NULL,
    run_after     timestamptz DEFAULT NULL,
    max_attempts  integer     DEFAULT 1,
    timeout       interval    DEFAULT NULL,
    transactional boolean     DEFAULT true,
    depends_on    bigint[]    DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    new_id  bigint;
    unknown bigint[];
BEGIN
    SELECT array_agg(d ORDER BY d) INTO unknown
      FROM unnest(depends_on) AS d
     WHERE NOT EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = d);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'depends_on names unknown job id(s) %', unknown
            USING ERRCODE = '23503';
    END IF;
    INSERT INTO broker_jobs (job_name, execute_str, job_queue, job_priority, job_language, run_as,
                             user_login, schedule_id, run_after, max_attempts, timeout, transactional)
    VALUES ($1, $2, coalesce($3, 1), coalesce($4, 0), coalesce($5, 'sql'), $6, $7, $8, $9,
            coalesce($10, 1), $11, coalesce($12, true))
    RETURNING id INTO new_id;
    INSERT INTO broker_job_dependencies (job_id, depends_on)
    SELECT DISTINCT new_id, d FROM unnest(depends_on) AS d;
    RETURN new_id;
END
$$;

-- Cancels a job: a pending one at once, a running one by cancelling its statement (the
-- listener of the active instance delivers it). Returns the job's status afterwards.
CREATE FUNCTION broker_cancel_job(p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
BEGIN
    SELECT * INTO j FROM broker_jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = '02000';
    END IF;
    IF NOT pg_has_role(current_user, j.owner, 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not cancel job % of %', quote_ident(current_user), p_id,
                quote_ident(j.owner)
            USING ERRCODE = '42501';
    END IF;
    UPDATE broker_jobs SET status = 'cancelled', completed_at = now(),
                           error_text = format('cancelled by %s', current_user)
     WHERE id = p_id AND status = 'pending';
    IF NOT FOUND AND (SELECT status FROM broker_jobs WHERE id = p_id) = 'running' THEN
        INSERT INTO broker_cancel_requests (job_id) VALUES (p_id) ON CONFLICT DO NOTHING;
        PERFORM pg_notify('broker_jobs', 'cancel');
    END IF;
    RETURN (SELECT status FROM broker_jobs WHERE id = p_id);
END
$$;

-- Run by the active instance's listener: cancels the statements of jobs asked to stop.
CREATE FUNCTION broker_deliver_cancels() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    SELECT count(pg_cancel_backend(a.pid)) INTO n
      FROM broker_cancel_requests r
      JOIN broker_jobs j ON j.id = r.job_id AND j.status = 'running'
      JOIN pg_stat_activity a ON a.pid = j.backend_pid
     WHERE a.application_name = left('pgsql-broker job ' || j.id, 63);
    RETURN n;
END
$$;

-- Now also applies the job's timeout (or the broker's default, in milliseconds; 0 = none)
-- and refuses to start a job whose cancel was asked for after its claim.
DROP FUNCTION broker_run(bigint, integer, boolean);
CREATE FUNCTION broker_run(p_id bigint, p_attempt integer, p_local boolean DEFAULT true,
                           p_default_timeout_ms bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
    timeout_ms bigint;
BEGIN
    -- NO KEY UPDATE: marks the job alive for recovery (which takes FOR UPDATE SKIP LOCKED)
    -- without blocking foreign-key checks of new dependents and cancel requests.
    SELECT * INTO j FROM broker_jobs WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND OR j.status <> 'running' OR j.attempts <> p_attempt THEN
        RAISE EXCEPTION 'job % attempt % is not claimed (status %)', p_id, p_attempt,
                coalesce(j.status, 'missing')
            USING ERRCODE = '55000';
    END IF;
    IF EXISTS (SELECT 1 FROM broker_cancel_requests WHERE job_id = p_id) THEN
        RAISE EXCEPTION 'job % was cancelled before it started', p_id USING ERRCODE = '57014';
    END IF;
    timeout_ms := coalesce(ceil(extract(epoch FROM j.timeout) * 1000)::bigint, p_default_timeout_ms);
    PERFORM set_config('statement_timeout', greatest(timeout_ms, 0)::text, p_local);
    PERFORM set_config('application_name', left('pgsql-broker job ' || p_id, 63), p_local);
    PERFORM set_config('broker.job_id', p_id::text, p_local);
    PERFORM set_config('broker.user_login', coalesce(j.user_login, ''), p_local);
    -- set_config takes the role name as a value, never as SQL text.
    PERFORM set_config('role', coalesce(j.run_as, j.owner), p_local);
    RETURN CASE WHEN p_local THEN txid_current() END;
END
$$;

-- Now keeps every attempt's error, and records a cancelled job as cancelled (never retried).
CREATE OR REPLACE FUNCTION broker_set(p_id bigint, p_attempt integer, p_status text,
                                      p_error text DEFAULT NULL, p_xid bigint DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
    cancelled_by name;
BEGIN
    IF p_xid IS NOT NULL AND txid_current_if_assigned() IS DISTINCT FROM p_xid THEN
        RAISE EXCEPTION 'job % ended the broker''s transaction (COMMIT or ROLLBACK in its SQL)', p_id
            USING ERRCODE = '2D000',
                  HINT = 'Submit jobs that manage transactions with transactional => false.';
    END IF;
    SELECT * INTO j FROM broker_jobs WHERE id = p_id FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    IF j.status <> 'running' OR j.attempts <> p_attempt THEN
        RETURN j.status;
    END IF;
    DELETE FROM broker_cancel_requests WHERE job_id = p_id RETURNING requested_by INTO cancelled_by;
    IF p_status = 'completed' THEN
        UPDATE broker_jobs SET status = 'completed', error_text = NULL, completed_at = now(),
                               backend_pid = NULL
         WHERE id = p_id;
    ELSIF p_status = 'failed' AND cancelled_by IS NOT NULL THEN
        UPDATE broker_jobs SET status = 'cancelled', completed_at = now(), backend_pid = NULL,
                               error_text = format('cancelled by %s while running', cancelled_by)
         WHERE id = p_id;
    ELSIF p_status = 'failed' THEN
        UPDATE broker_jobs
           SET error_text = p_error, backend_pid = NULL,
               attempt_errors = attempt_errors || format('attempt %s: %s', j.attempts, p_error)
         WHERE id = p_id;
        IF j.attempts < j.max_attempts THEN
            -- Exponential backoff with jitter: about 2^attempt seconds, capped at an hour.
            UPDATE broker_jobs SET status = 'pending', instance_id = NULL,
                                   run_after = now() + least(3600, power(2, j.attempts))
                                               * (0.75 + random() / 2) * interval '1 second'
             WHERE id = p_id;
        ELSE
            UPDATE broker_jobs SET status = 'failed', completed_at = now() WHERE id = p_id;
        END IF;
    ELSIF p_status = 'pending' THEN
        UPDATE broker_jobs SET status = 'pending', attempts = attempts - 1, started_at = NULL,
                               instance_id = NULL, backend_pid = NULL
         WHERE id = p_id;
    ELSE
        RAISE EXCEPTION 'broker_set: status % is not one of completed, failed, pending',
                quote_literal(p_status)
            USING ERRCODE = '22023';
    END IF;
    RETURN (SELECT status FROM broker_jobs WHERE id = p_id);
END
$$;

-- The claim skips jobs still waiting for dependencies.
CREATE OR REPLACE FUNCTION broker_get(p_queue integer, p_instance bigint, p_limit integer DEFAULT 1)
RETURNS TABLE (id bigint, attempt integer, execute_str text, job_language text, transactional boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM broker_queueinstance qi
                    WHERE qi.id = p_instance AND qi.status = 'active') THEN
        RAISE EXCEPTION 'broker instance % is not the active instance', p_instance
            USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
    UPDATE broker_jobs j
       SET status = 'running', attempts = j.attempts + 1, instance_id = p_instance,
           backend_pid = pg_backend_pid(), started_at = now(), completed_at = NULL
     WHERE j.id = ANY (ARRAY(
             SELECT c.id FROM broker_jobs c
              WHERE c.status = 'pending' AND c.waiting = 0 AND c.job_queue = p_queue
                AND c.run_after <= now()
              ORDER BY c.job_priority DESC, c.id
              LIMIT p_limit
              FOR UPDATE SKIP LOCKED))
    RETURNING j.id, j.attempts, j.execute_str, j.job_language, j.transactional;
END
$$;

-- Deletes up to p_batch finished jobs past their retention (NULL interval = keep forever).
CREATE FUNCTION broker_purge(p_completed interval, p_failed interval, p_batch integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM broker_jobs
     WHERE id IN (
        SELECT id FROM broker_jobs
         WHERE (status = 'completed' AND completed_at < now() - p_completed)
            OR (status IN ('failed', 'cancelled') AND completed_at < now() - p_failed)
         LIMIT p_batch
           FOR UPDATE SKIP LOCKED);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

REVOKE ALL ON FUNCTION broker_deliver_cancels() FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_run(bigint, integer, boolean, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_purge(interval, interval, integer) FROM PUBLIC;
