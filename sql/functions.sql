-- pgsql-broker functions and triggers. Re-applied by every `pgsql-broker install` (each
-- statement is idempotent), after the numbered schema files; the install records this file's
-- digest so `--verify-only` and `start` notice functions from another build.
-- A function whose signature changes must first be dropped by a numbered schema file.

-- ---------------------------------------------------------------- instance lock

-- The key of the session advisory lock that makes an instance the active one.
CREATE OR REPLACE FUNCTION broker_instance_lock_key() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT hashtextextended('pgsql-broker instance ' || current_database(), 0)
$$;

-- True when this session holds the instance lock, i.e. is the active instance's listener.
CREATE OR REPLACE FUNCTION broker_holds_instance_lock() RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
        SELECT 1 FROM pg_locks
         WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted
           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND classid = ((broker_instance_lock_key() >> 32) & 4294967295)::oid
           AND objid = (broker_instance_lock_key() & 4294967295)::oid
           AND objsubid = 1)
$$;

-- ---------------------------------------------------------------- triggers on broker_jobs

-- True for the broker itself: the tables' owner (the login that installed them) or a superuser.
-- Everyone else, broker_admin members included, is a submitter to the triggers below.
-- (PL/pgSQL, not SQL: its plan is cached per session, and it runs on every update of a job.)
CREATE OR REPLACE FUNCTION broker_caller_is_broker() RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN pg_has_role(current_user,
                       (SELECT relowner FROM pg_class WHERE oid = 'broker_jobs'::regclass), 'MEMBER');
END
$$;

-- broker.max_job_size as the active broker published it (1 MB until one has); 0: no limit.
CREATE OR REPLACE FUNCTION broker_max_job_size() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT value::bigint FROM broker_settings WHERE name = 'max_job_size'),
                    1048576);
END
$$;

-- What a job (or a schedule's jobs) runs: a known language and some SQL. p_what names the
-- row in the error.

CREATE OR REPLACE FUNCTION broker_check_job_text(p_language text, p_execute_str text, p_what text)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
    size_limit bigint := broker_max_job_size();
BEGIN
    IF p_language IS NULL OR p_language NOT IN ('sql', 'plpgsql') THEN
        RAISE EXCEPTION 'job_language % is not supported', coalesce(quote_literal(p_language), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use ''sql'' (statements run in order) or ''plpgsql'' (the body of a DO block).';
    END IF;
    IF p_execute_str IS NULL OR btrim(p_execute_str) = '' THEN
        RAISE EXCEPTION 'execute_str of % is empty', p_what USING ERRCODE = '22023';
    END IF;
    IF size_limit > 0 AND octet_length(p_execute_str) > size_limit THEN
        RAISE EXCEPTION 'execute_str of % is % bytes, more than broker.max_job_size (% bytes)',
                p_what, octet_length(p_execute_str), size_limit
            USING ERRCODE = '54000',
                  HINT = 'Keep large data in a table the job reads, or raise broker.max_job_size.';
    END IF;
END
$$;

-- True when p_id is the id the identity column just gave this session's insert. A submitter
-- who picks ids (OVERRIDING SYSTEM VALUE) could take the ids the sequence hands out next and
-- make other roles' inserts fail.
CREATE OR REPLACE FUNCTION broker_job_id_assigned(p_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RETURN p_id = currval(pg_get_serial_sequence('broker_jobs', 'id'));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
    RETURN false; -- no id drawn in this session yet
END
$$;

-- Every way into broker_jobs (broker_add_job or a plain INSERT) passes this check, so a
-- submitter can neither smuggle another owner nor a pre-set state past it.
CREATE OR REPLACE FUNCTION broker_jobs_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_check_job_text(NEW.job_language, NEW.execute_str,
                                  format('job %s', coalesce(quote_literal(NEW.job_name), 'NULL')));
    IF NEW.run_as IS NOT NULL AND NOT pg_has_role(current_user, NEW.run_as, 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not submit a job that runs as %',
                quote_ident(current_user), quote_ident(NEW.run_as)
            USING ERRCODE = '42501';
    END IF;
    NEW.owner        := current_user;
    IF NOT broker_caller_is_broker() THEN
        IF NOT broker_job_id_assigned(NEW.id) THEN
            RAISE EXCEPTION 'role % may not choose the id of a job (%); the database assigns ids',
                    quote_ident(current_user), NEW.id
                USING ERRCODE = '42501', HINT = 'Leave out the id column and OVERRIDING SYSTEM VALUE.';
        END IF;
        -- Only the broker makes jobs for a due time; a submitter may link a job to a schedule
        -- of its own but cannot occupy another schedule's slot.
        NEW.scheduled_for := NULL;
        IF NEW.schedule_id IS NOT NULL AND NOT EXISTS (
               SELECT 1 FROM broker_schedule s
                WHERE s.id = NEW.schedule_id AND pg_has_role(current_user, s.owner, 'MEMBER')) THEN
            RAISE EXCEPTION 'schedule % is not one of role %', NEW.schedule_id, quote_ident(current_user)
                USING ERRCODE = '42501';
        END IF;
    ELSIF NEW.scheduled_for IS NOT NULL THEN
        -- A schedule's job belongs to the schedule's owner, who can then see and cancel it.
        NEW.owner := coalesce((SELECT s.owner FROM broker_schedule s WHERE s.id = NEW.schedule_id),
                              current_user);
    END IF;
    NEW.job_name     := coalesce(NEW.job_name, '');
    NEW.status       := 'pending';
    NEW.error_text   := NULL;
    NEW.attempts     := 0;
    NEW.attempt_errors := '{}';
    NEW.waiting      := 0;
    NEW.run_after    := coalesce(NEW.run_after, now());
    NEW.delayed      := NEW.run_after > now();
    NEW.instance_id  := NULL;
    NEW.backend_pid  := NULL;
    NEW.created_at   := now();
    NEW.started_at   := NULL;
    NEW.completed_at := NULL;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS broker_jobs_before_insert ON broker_jobs;
CREATE TRIGGER broker_jobs_before_insert
    BEFORE INSERT ON broker_jobs
    FOR EACH ROW EXECUTE FUNCTION broker_jobs_before_insert();

-- One notification per queue and statement, whatever inserted the rows; the payload is the
-- queue, or 'delayed' for jobs not due yet (the broker then plans its next look).
CREATE OR REPLACE FUNCTION broker_jobs_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('broker_jobs', q.payload)
       FROM (SELECT DISTINCT CASE WHEN delayed THEN 'delayed' ELSE job_queue::text END AS payload
               FROM broker_new_jobs) AS q;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS broker_jobs_notify ON broker_jobs;
CREATE TRIGGER broker_jobs_notify
    AFTER INSERT ON broker_jobs
    REFERENCING NEW TABLE AS broker_new_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION broker_jobs_notify();

-- Whoever is not the broker may change a job in two ways only: pending to cancelled, and
-- failed or cancelled back to pending (a retry: nothing else may change, broker_jobs_retry
-- below fills in the rest). That holds for broker_admin members too, who see every job:
-- rewriting a job's SQL or role would let them run it with privileges they lack.
CREATE OR REPLACE FUNCTION broker_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed broker_jobs;
BEGIN
    allowed := OLD;
    IF OLD.status IN ('failed', 'cancelled') AND NEW.status = 'pending' THEN
        allowed.status := 'pending';
    ELSE
        allowed.status := 'cancelled';
        allowed.error_text := NEW.error_text;
        allowed.completed_at := NEW.completed_at;
    END IF;
    IF OLD.status NOT IN ('pending', 'failed', 'cancelled') OR NEW IS DISTINCT FROM allowed THEN
        RAISE EXCEPTION 'role % may only cancel pending job % or retry it once failed or cancelled, not change it otherwise',
                quote_ident(current_user), OLD.id
            USING ERRCODE = '42501', HINT = 'Use broker_cancel_job(id) or broker_retry_job(id).';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS broker_jobs_before_update ON broker_jobs;
-- The broker's own updates (several per job) skip the trigger altogether. The condition names
-- the tables' owner by oid, as broker_caller_is_broker() would find it: a plain expression,
-- cheap on every row and independent of any session's search_path.
DO $when$
BEGIN
    EXECUTE format(
        'CREATE TRIGGER broker_jobs_before_update
             BEFORE UPDATE ON broker_jobs
             FOR EACH ROW WHEN (NOT pg_catalog.pg_has_role(CURRENT_USER, %s::pg_catalog.oid, ''MEMBER''))
             EXECUTE FUNCTION broker_jobs_before_update()',
        (SELECT relowner FROM pg_class WHERE oid = 'broker_jobs'::regclass));
END
$when$;

-- A failed or cancelled job set back to pending (broker_retry_job, or a plain UPDATE ... SET
-- status = 'pending' that the rule above allows) is a retry, whoever makes it: unclaimed, with
-- at least one more attempt allowed (max_attempts becomes attempts + 1 when the job had used
-- them all; a job cancelled before using its attempts keeps them), its error_text cleared (the
-- error of every failed attempt stays in attempt_errors), waiting for its dependencies that
-- have not completed, delayed while its run_after is in the future, and no cancel left over
-- from its last run. A dependency that failed or was cancelled must be retried first; a job
-- whose owner may no longer run as its run_as is not run again. The broker hears of it at once.
CREATE OR REPLACE FUNCTION broker_jobs_retry() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bad record;
BEGIN
    SELECT dj.id, dj.status INTO bad
      FROM broker_job_dependencies d JOIN broker_jobs dj ON dj.id = d.depends_on
     WHERE d.job_id = NEW.id AND dj.status IN ('failed', 'cancelled')
     ORDER BY dj.id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'job % depends on job %, which is %; retry job % first', NEW.id, bad.id,
                bad.status, bad.id
            USING ERRCODE = '55000',
                  HINT = 'Retrying a job also retries the dependents that were cancelled because it ended.';
    END IF;
    IF NEW.run_as IS NOT NULL
       AND NOT coalesce(pg_has_role(to_regrole(quote_ident(NEW.owner)),
                                    to_regrole(quote_ident(NEW.run_as)), 'MEMBER'), false) THEN
        RAISE EXCEPTION 'job % runs as %, which its owner % may no longer use; it is not run again',
                NEW.id, quote_ident(NEW.run_as), quote_ident(NEW.owner)
            USING ERRCODE = '42501';
    END IF;
    NEW.max_attempts := greatest(OLD.max_attempts, OLD.attempts + 1);
    NEW.error_text   := NULL;
    NEW.claim        := NULL;
    NEW.instance_id  := NULL;
    NEW.backend_pid  := NULL;
    NEW.started_at   := NULL;
    NEW.completed_at := NULL;
    NEW.waiting      := (SELECT count(*) FROM broker_job_dependencies d
                           JOIN broker_jobs dj ON dj.id = d.depends_on
                          WHERE d.job_id = NEW.id AND dj.status <> 'completed');
    NEW.delayed      := NEW.run_after > now();
    DELETE FROM broker_cancel_requests WHERE job_id = NEW.id;
    IF NEW.delayed THEN
        PERFORM pg_notify('broker_jobs', 'delayed');
    ELSIF NEW.waiting = 0 THEN
        PERFORM pg_notify('broker_jobs', NEW.job_queue::text);
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS broker_jobs_retry ON broker_jobs;
-- Named to fire after broker_jobs_before_update (triggers fire in name order), which checks
-- the submitter's change before this one completes it.
CREATE TRIGGER broker_jobs_retry
    BEFORE UPDATE OF status ON broker_jobs
    FOR EACH ROW
    WHEN (OLD.status IN ('failed', 'cancelled') AND NEW.status = 'pending')
    EXECUTE FUNCTION broker_jobs_retry();

-- Keeps `waiting` right whoever adds an edge, and settles a job whose dependency already ended.
CREATE OR REPLACE FUNCTION broker_job_dependencies_insert() RETURNS trigger
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

DROP TRIGGER IF EXISTS broker_job_dependencies_insert ON broker_job_dependencies;
CREATE TRIGGER broker_job_dependencies_insert
    AFTER INSERT ON broker_job_dependencies
    FOR EACH ROW EXECUTE FUNCTION broker_job_dependencies_insert();

-- When a job ends, its dependents move on: one less to wait for, or cancelled with the reason.
-- Cancelling a dependent fires this again for its own dependents, so it is transitive. A
-- dependent some other session holds locked is skipped, never waited for: the poll's
-- broker_settle_dependencies() settles it once the lock is gone.
CREATE OR REPLACE FUNCTION broker_jobs_after_end() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    q integer;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM broker_job_dependencies d WHERE d.depends_on = NEW.id) THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'completed' THEN
        FOR q IN
            WITH ready AS (
                UPDATE broker_jobs j SET waiting = j.waiting - 1
                 WHERE j.id IN (SELECT w.id FROM broker_job_dependencies d
                                  JOIN broker_jobs w ON w.id = d.job_id
                                 WHERE d.depends_on = NEW.id AND w.status = 'pending'
                                   FOR NO KEY UPDATE OF w SKIP LOCKED)
                RETURNING j.job_queue, j.waiting, j.delayed)
            SELECT DISTINCT r.job_queue FROM ready r WHERE r.waiting = 0 AND NOT r.delayed
        LOOP
            PERFORM pg_notify('broker_jobs', q::text);
        END LOOP;
    ELSE
        UPDATE broker_jobs j
           SET status = 'cancelled', completed_at = clock_timestamp(),
               error_text = format('dependency %s %s', NEW.id, NEW.status)
         WHERE j.id IN (SELECT w.id FROM broker_job_dependencies d
                          JOIN broker_jobs w ON w.id = d.job_id
                         WHERE d.depends_on = NEW.id AND w.status = 'pending'
                           FOR NO KEY UPDATE OF w SKIP LOCKED);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS broker_jobs_after_end ON broker_jobs;
CREATE TRIGGER broker_jobs_after_end
    AFTER UPDATE OF status ON broker_jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION broker_jobs_after_end();

-- ---------------------------------------------------------------- triggers on broker_schedule

-- Every way into or through broker_schedule (the helpers or plain INSERT/UPDATE) passes here.
-- The owner is whoever last wrote what runs or as whom: a schedule never runs SQL with the
-- privileges of a role that did not write it.
CREATE OR REPLACE FUNCTION broker_schedule_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    zone      text;
    rewritten boolean := TG_OP = 'INSERT';
BEGIN
    IF NEW.schedule_name IS NULL OR btrim(NEW.schedule_name) = '' THEN
        RAISE EXCEPTION 'schedule_name is empty' USING ERRCODE = '22023';
    END IF;
    IF NEW.cron IS NULL OR btrim(NEW.cron) = '' THEN
        RAISE EXCEPTION 'cron of schedule % is empty', quote_literal(NEW.schedule_name)
            USING ERRCODE = '22023',
                  HINT = 'Check an expression with: pgsql-broker schedule next ''EXPR''';
    END IF;
    PERFORM broker_check_job_text(NEW.job_language, NEW.execute_str,
                                  format('schedule %s', quote_literal(NEW.schedule_name)));
    IF TG_OP = 'INSERT' OR NEW.timezone IS DISTINCT FROM OLD.timezone THEN
        -- Stored in its canonical spelling, which the broker looks up in its own zone table.
        SELECT z.name INTO zone FROM pg_timezone_names z
         WHERE lower(z.name) = lower(btrim(NEW.timezone))
         ORDER BY z.name = btrim(NEW.timezone) DESC, z.name
         LIMIT 1;
        IF zone IS NULL THEN
            RAISE EXCEPTION 'unknown time zone % for schedule %',
                    coalesce(quote_literal(NEW.timezone), 'NULL'), quote_literal(NEW.schedule_name)
                USING ERRCODE = '22023',
                      HINT = 'Use an IANA name such as UTC or Europe/Amsterdam (see pg_timezone_names).';
        END IF;
        NEW.timezone := zone;
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.owner      := current_user;
        NEW.enabled    := coalesce(NEW.enabled, true);
        NEW.next_run   := NULL;
        NEW.last_run   := NULL;
        NEW.last_error := NULL;
        NEW.created_at := now();
    ELSE
        IF NEW.execute_str IS DISTINCT FROM OLD.execute_str
           OR NEW.job_language IS DISTINCT FROM OLD.job_language
           OR NEW.run_as IS DISTINCT FROM OLD.run_as
           OR NEW.owner IS DISTINCT FROM OLD.owner THEN
            NEW.owner := current_user;
            rewritten := true;
        END IF;
        -- A new expression, zone or switch starts a new series: the broker plans next_run
        -- afresh, from now (so enabling never fires for the time it was off).
        IF NEW.cron IS DISTINCT FROM OLD.cron OR NEW.timezone IS DISTINCT FROM OLD.timezone
           OR NEW.enabled IS DISTINCT FROM OLD.enabled THEN
            NEW.next_run := NULL;
        END IF;
        IF NEW.enabled AND NOT OLD.enabled THEN
            NEW.last_error := NULL;
        END IF;
        NEW.created_at := OLD.created_at;
    END IF;
    -- Checked when what runs or as whom is written, so an owner whose membership was revoked
    -- can still disable or remove the schedule.
    IF rewritten AND NEW.run_as IS NOT NULL
       AND NOT pg_has_role(current_user, NEW.run_as, 'MEMBER') THEN
        RAISE EXCEPTION 'role % may not create a schedule that runs as %',
                quote_ident(current_user), quote_ident(NEW.run_as)
            USING ERRCODE = '42501';
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS broker_schedule_check ON broker_schedule;
CREATE TRIGGER broker_schedule_check
    BEFORE INSERT OR UPDATE ON broker_schedule
    FOR EACH ROW EXECUTE FUNCTION broker_schedule_check();

-- A schedule to plan (new, changed, enabled) or to fire now wakes the broker at once rather
-- than at its next poll. The broker's own planning sets next_run in the future: no echo.
CREATE OR REPLACE FUNCTION broker_schedule_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('broker_jobs', 'schedule');
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS broker_schedule_notify ON broker_schedule;
CREATE TRIGGER broker_schedule_notify
    AFTER INSERT OR UPDATE ON broker_schedule
    FOR EACH ROW WHEN (NEW.enabled AND (NEW.next_run IS NULL OR NEW.next_run <= now()))
    EXECUTE FUNCTION broker_schedule_notify();

-- ---------------------------------------------------------------- the submitter's API

CREATE OR REPLACE FUNCTION broker_add_job(
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
    depends_on    bigint[]    DEFAULT NULL,
    retry_on_crash boolean    DEFAULT false
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
                             user_login, schedule_id, run_after, max_attempts, timeout, transactional,
                             retry_on_crash)
    VALUES ($1, $2, coalesce($3, 1), coalesce($4, 0), coalesce($5, 'sql'), $6, $7, $8, $9,
            coalesce($10, 1), $11, coalesce($12, true), coalesce($14, false))
    RETURNING id INTO new_id;
    INSERT INTO broker_job_dependencies (job_id, depends_on)
    SELECT DISTINCT new_id, d FROM unnest(depends_on) AS d;
    RETURN new_id;
END
$$;

-- The job `p_id` as the caller sees it, if the caller may `p_action` (cancel, retry) it: its
-- owner's members and broker_admin's. One rule for every operator action on a job. Runs as
-- the caller, so row-level security hides other roles' jobs as if they did not exist.
CREATE OR REPLACE FUNCTION broker_job_for_caller(p_id bigint, p_action text) RETURNS broker_jobs
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
BEGIN
    SELECT * INTO j FROM broker_jobs b WHERE b.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = '02000';
    END IF;
    IF NOT (pg_has_role(current_user, j.owner, 'MEMBER')
            OR pg_has_role(current_user, 'broker_admin', 'MEMBER')) THEN
        RAISE EXCEPTION 'role % may not % job % of %', quote_ident(current_user), p_action, p_id,
                quote_ident(j.owner)
            USING ERRCODE = '42501';
    END IF;
    RETURN j;
END
$$;

-- Cancels a job of the caller's (or any job, for broker_admin members): a pending one at once,
-- a running one by cancelling its statement (the listener of the active instance delivers it).
-- Returns the job's status afterwards.
CREATE OR REPLACE FUNCTION broker_cancel_job(p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM broker_job_for_caller(p_id, 'cancel');
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

-- Retries a failed or cancelled job of the caller's (or any job, for broker_admin members):
-- who may cancel a job may retry it. The job is pending again with one more attempt allowed
-- (see broker_jobs_retry), and so are its dependents that were cancelled because it ended
-- (their error_text says 'dependency ...'), transitively, each waiting for what it depends on;
-- a dependent the caller may not retry, or with another dependency still failed or cancelled,
-- stays cancelled. status: the job's status afterwards; dependents: the ids pending again.
CREATE OR REPLACE FUNCTION broker_retry_job(p_id bigint, OUT status text, OUT dependents bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    frontier bigint[] := ARRAY[p_id];
    revived bigint[];
    d bigint;
BEGIN
    PERFORM broker_job_for_caller(p_id, 'retry');
    UPDATE broker_jobs b SET status = 'pending'
     WHERE b.id = p_id AND b.status IN ('failed', 'cancelled');
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % is %; only a failed or cancelled job can be retried', p_id,
                (SELECT b.status FROM broker_jobs b WHERE b.id = p_id)
            USING ERRCODE = '55000';
    END IF;
    dependents := '{}';
    WHILE cardinality(frontier) > 0 LOOP
        revived := '{}';
        FOR d IN SELECT DISTINCT w.id
                   FROM broker_job_dependencies e JOIN broker_jobs w ON w.id = e.job_id
                  WHERE e.depends_on = ANY (frontier) AND w.status = 'cancelled'
                    AND w.error_text LIKE 'dependency %'
                  ORDER BY w.id
        LOOP
            BEGIN
                UPDATE broker_jobs b SET status = 'pending' WHERE b.id = d AND b.status = 'cancelled';
                IF FOUND THEN
                    revived := revived || d;
                END IF;
            EXCEPTION WHEN object_not_in_prerequisite_state OR insufficient_privilege THEN
                NULL; -- another dependency still failed or cancelled, or not the caller's to retry
            END;
        END LOOP;
        dependents := dependents || revived;
        frontier := revived;
    END LOOP;
    status := (SELECT b.status FROM broker_jobs b WHERE b.id = p_id);
END
$$;

CREATE OR REPLACE FUNCTION broker_add_schedule(
    schedule_name text,
    cron          text,
    execute_str   text,
    job_queue     integer DEFAULT 1,
    job_priority  integer DEFAULT 0,
    job_language  text    DEFAULT 'sql',
    run_as        name    DEFAULT NULL,
    user_login    text    DEFAULT NULL,
    timezone      text    DEFAULT 'UTC',
    overlap       boolean DEFAULT false
) RETURNS bigint
LANGUAGE sql AS $$
    INSERT INTO broker_schedule (schedule_name, cron, execute_str, job_queue, job_priority,
                                 job_language, run_as, user_login, timezone, overlap)
    VALUES ($1, $2, $3, coalesce($4, 1), coalesce($5, 0), coalesce($6, 'sql'), $7, $8,
            coalesce($9, 'UTC'), coalesce($10, false))
    RETURNING id
$$;

-- Jobs the schedule already made stay (their schedule_id becomes NULL) and run as usual.
CREATE OR REPLACE FUNCTION broker_remove_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM broker_schedule s WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

-- Enabling clears last_error; the next fire time is the first one from now on.
CREATE OR REPLACE FUNCTION broker_enable_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH hit AS (UPDATE broker_schedule s SET enabled = true WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM hit)
$$;

CREATE OR REPLACE FUNCTION broker_disable_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH hit AS (UPDATE broker_schedule s SET enabled = false WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM hit)
$$;

-- ---------------------------------------------------------------- the broker's API

-- Makes the caller the database's active instance: a session advisory lock, so the claim dies
-- with the connection (even on kill -9), plus a row operators can read. The caller recovers
-- what dead instances left (broker_recover) next, and logs what that changed.
-- Any session can take any advisory lock, so a holder that is not the newest active instance's
-- listener is no broker: it is named, and ended when p_evict is set and the login may do so.
CREATE OR REPLACE FUNCTION broker_register_instance(p_name text, p_host text, p_pid integer, p_version text,
                                         p_evict boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    other broker_queueinstance;
    holder record;
    new_id bigint;
BEGIN
    IF NOT pg_try_advisory_lock(broker_instance_lock_key()) THEN
        SELECT * INTO other FROM broker_queueinstance WHERE status = 'active' ORDER BY id DESC LIMIT 1;
        SELECT * INTO holder FROM broker_instance_lock_holder();
        IF holder.pid IS NOT NULL AND holder.pid IS DISTINCT FROM other.backend_pid THEN
            IF p_evict THEN
                BEGIN
                    PERFORM pg_terminate_backend(holder.pid, 2000);
                EXCEPTION WHEN insufficient_privilege THEN
                    NULL; -- explained below
                END;
            END IF;
            RAISE EXCEPTION 'the instance lock of database % is held by a session that is no broker instance: pid %, role %, application %, connected since %',
                    quote_ident(current_database()), holder.pid, quote_ident(holder.usename),
                    quote_literal(holder.application_name),
                    holder.backend_start || CASE WHEN p_evict THEN ' (ending it)' ELSE '' END
                USING ERRCODE = '55P03',
                      HINT = 'End that session (SELECT pg_terminate_backend(pid)), or set broker.evict_lock_holders and let the broker''s login signal it (GRANT pg_signal_backend).';
        END IF;
        -- The holder is this very process's own earlier session (e.g. a half-open connection
        -- after a network cut): end it; the caller's retry then gets the lock.
        IF other.host = p_host AND other.pid = p_pid AND other.backend_pid <> pg_backend_pid() THEN
            PERFORM pg_terminate_backend(other.backend_pid);
        END IF;
        RAISE EXCEPTION 'another broker instance is active on database %: instance % (%) on host %, pid %, last heartbeat %',
                quote_ident(current_database()), other.id, quote_literal(other.name),
                other.host, other.pid, other.heartbeat_at
            USING ERRCODE = '55P03';
    END IF;
    -- Holding the lock proves every other instance is gone, whatever its row says.
    UPDATE broker_queueinstance SET status = 'dead', stopped_at = now() WHERE status = 'active';
    INSERT INTO broker_queueinstance (name, host, pid, version)
    VALUES (p_name, p_host, p_pid, p_version)
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- The session holding the instance lock now, if any, as pg_stat_activity describes it.
CREATE OR REPLACE FUNCTION broker_instance_lock_holder(OUT pid integer, OUT usename name,
                                                       OUT application_name text,
                                                       OUT backend_start timestamptz,
                                                       OUT is_broker boolean)
LANGUAGE sql STABLE AS $$
    SELECT l.pid, a.usename, a.application_name, a.backend_start,
           l.pid = (SELECT backend_pid FROM broker_queueinstance
                     WHERE status = 'active' ORDER BY id DESC LIMIT 1)
      FROM pg_locks l
      LEFT JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock'
       AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND l.classid = ((broker_instance_lock_key() >> 32) & 4294967295)::oid
       AND l.objid = (broker_instance_lock_key() & 4294967295)::oid
       AND l.objsubid = 1
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION broker_ping_instance(p_instance bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE broker_queueinstance SET heartbeat_at = now()
     WHERE id = p_instance AND status = 'active';
    RETURN FOUND;
END
$$;

CREATE OR REPLACE FUNCTION broker_shutdown_instance(p_instance bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE broker_queueinstance SET status = 'shutdown', stopped_at = now()
     WHERE id = p_instance AND status = 'active';
    IF broker_holds_instance_lock() THEN
        PERFORM pg_advisory_unlock(broker_instance_lock_key());
    END IF;
END
$$;

-- Publishes a setting of the active broker that the database enforces (see broker_settings).
CREATE OR REPLACE FUNCTION broker_publish_setting(p_name text, p_value text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO broker_settings (name, value) VALUES (p_name, p_value)
    ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value
     WHERE broker_settings.value IS DISTINCT FROM EXCLUDED.value
$$;

-- Gives back what dead instances left running: a transactional job is pending again (its
-- transaction rolled back), a non-transactional one failed ("instance died while running") or,
-- with retry_on_crash, pending. Jobs in p_in_flight are never touched, whatever instance id
-- they carry: the calling process has them claimed right now (its listener may have registered
-- again); every other running job is an orphan, this instance's too (a worker that lost its
-- connection lets go of its jobs). A row still locked belongs to a transaction still alive
-- somewhere and waits for a later call.
-- requeued: jobs pending again; failed: non-transactional jobs recorded failed.
CREATE OR REPLACE FUNCTION broker_recover(p_instance bigint, p_in_flight bigint[] DEFAULT '{}',
                                          OUT requeued integer, OUT failed bigint[])
LANGUAGE plpgsql AS $$
DECLARE
    mine bigint[] := coalesce(p_in_flight, '{}');
BEGIN
    IF NOT broker_holds_instance_lock() THEN
        RAISE EXCEPTION 'broker_recover must be called by the active instance''s listener'
            USING ERRCODE = '55000';
    END IF;
    -- A dead instance's job may still be executing in a backend the server has not yet noticed
    -- is orphaned; it holds the row lock and would run on unobserved. Only a caller holding the
    -- instance lock (so every other instance is gone) gets here. The job's row may not say
    -- which backend runs it yet (its batch has not committed), its application_name does.
    PERFORM pg_terminate_backend(a.pid)
       FROM broker_jobs j
       JOIN pg_stat_activity a ON a.application_name = left('pgsql-broker job ' || j.id, 63)
      WHERE j.status = 'running' AND j.instance_id IS DISTINCT FROM p_instance
        AND NOT j.id = ANY (mine)
        AND a.usename = session_user
        AND a.pid <> pg_backend_pid();
    WITH orphans AS (
        SELECT j.id FROM broker_jobs j
         WHERE j.status = 'running' AND NOT j.id = ANY (mine)
         FOR UPDATE SKIP LOCKED
    ), recovered AS (
    UPDATE broker_jobs j
       SET status         = CASE WHEN j.transactional OR j.retry_on_crash THEN 'pending'
                                 ELSE 'failed' END,
           claim          = NULL,
           attempts       = CASE WHEN j.transactional OR j.retry_on_crash THEN j.attempts - 1
                                 ELSE j.attempts END,
           delayed        = false,
           error_text     = CASE WHEN j.transactional THEN j.error_text
                                 WHEN j.retry_on_crash
                                 THEN 'instance died while running; run again (retry_on_crash)'
                                 ELSE 'instance died while running' END,
           -- A rolled-back transactional attempt left no trace; the others may have.
           attempt_errors = CASE WHEN j.transactional THEN j.attempt_errors
                                 ELSE j.attempt_errors
                                      || format('attempt %s: instance died while running', j.attempts)
                            END,
           completed_at   = CASE WHEN j.transactional OR j.retry_on_crash THEN NULL ELSE now() END,
           started_at     = CASE WHEN j.transactional OR j.retry_on_crash THEN NULL
                                 ELSE j.started_at END,
           instance_id    = CASE WHEN j.transactional OR j.retry_on_crash THEN NULL
                                 ELSE j.instance_id END,
           backend_pid    = NULL
      FROM orphans o
     WHERE j.id = o.id
    RETURNING j.id, j.status)
    SELECT count(*) FILTER (WHERE r.status = 'pending'),
           array_agg(r.id ORDER BY r.id) FILTER (WHERE r.status = 'failed')
      INTO requeued, failed
      FROM recovered r;
END
$$;

-- Claims up to p_limit ready jobs of a queue, best first (higher priority, then older), and
-- marks them running; the listener commits this and hands them to the queue's workers. FOR NO
-- KEY UPDATE: a dependent's insert holds its dependency's row FOR KEY SHARE, which must not
-- hide that job from the claim. The ready index holds only claimable jobs, so jobs not due,
-- waiting or finished cost nothing here. timeout_ms: the job's own timeout (NULL: none set).
CREATE OR REPLACE FUNCTION broker_get(p_queue integer, p_instance bigint, p_limit integer DEFAULT 1)
RETURNS TABLE (id bigint, claim bigint, attempt integer, role_oid oid, timeout_ms bigint,
               transactional boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF NOT EXISTS (SELECT 1 FROM broker_queueinstance qi
                    WHERE qi.id = p_instance AND qi.status = 'active') THEN
        RAISE EXCEPTION 'broker instance % is not the active instance', p_instance
            USING ERRCODE = '55000';
    END IF;
    RETURN QUERY
    WITH claimed AS (
        UPDATE broker_jobs j
           SET status = 'running', attempts = j.attempts + 1, claim = nextval('broker_claims'),
               instance_id = p_instance, backend_pid = NULL, started_at = NULL,
               completed_at = NULL
         WHERE j.id = ANY (ARRAY(
                 SELECT c.id FROM broker_jobs c
                  WHERE c.job_queue = p_queue AND c.status = 'pending' AND c.waiting = 0
                    AND NOT c.delayed
                  ORDER BY c.job_priority DESC, c.id
                  LIMIT p_limit
                  FOR NO KEY UPDATE SKIP LOCKED))
        RETURNING j.id, j.claim, j.attempts, coalesce(j.run_as, j.owner) AS role, j.timeout,
                  j.transactional, j.job_priority)
    SELECT c.id, c.claim, c.attempts, to_regrole(quote_ident(c.role))::oid,
           -- Clamped: no interval a submitter writes may break the claim of a whole queue.
           CASE WHEN c.timeout IS NOT NULL
                THEN greatest(0, least(ceil(extract(epoch FROM c.timeout) * 1000), 1e15))::bigint
           END,
           c.transactional
      FROM claimed c
     ORDER BY c.job_priority DESC, c.id;
END
$$;

-- Makes delayed jobs whose time has come claimable (at most p_limit, oldest due first) and
-- returns the queues that got some, plus how long until the next delayed job is due.
CREATE OR REPLACE FUNCTION broker_promote_delayed(p_limit integer, OUT queues integer[],
                                                  OUT next_in float8)
LANGUAGE plpgsql AS $$
BEGIN
    WITH due AS (
        UPDATE broker_jobs j SET delayed = false
         WHERE j.id = ANY (ARRAY(
                 SELECT d.id FROM broker_jobs d
                  WHERE d.status = 'pending' AND d.delayed AND d.run_after <= now()
                  ORDER BY d.run_after
                  LIMIT p_limit
                  FOR NO KEY UPDATE SKIP LOCKED))
        RETURNING j.job_queue, j.waiting)
    SELECT array_agg(DISTINCT job_queue) FILTER (WHERE waiting = 0) INTO queues FROM due;
    SELECT extract(epoch FROM min(run_after) - now())::float8 INTO next_in
      FROM broker_jobs WHERE status = 'pending' AND delayed;
END
$$;

-- Makes sure role p_role has its runner, broker_exec.run_<oid>(): a SECURITY DEFINER function
-- owned by that role, where PostgreSQL forbids SET ROLE, RESET ROLE and SET SESSION
-- AUTHORIZATION, so a job cannot switch back to the broker's login. It runs the SQL that
-- broker_run() left in the transaction-local setting broker.execute_str. The broker calls this
-- outside any job's transaction, one worker at a time, and remembers which runners exist.
CREATE OR REPLACE FUNCTION broker_prepare_runner(p_role oid) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    role   name := (SELECT rolname FROM pg_roles WHERE oid = p_role);
    runner text := 'run_' || p_role;
    owns_schema_create boolean;
BEGIN
    IF role IS NULL THEN
        RAISE EXCEPTION 'role with oid % does not exist (dropped after its job was queued?)', p_role
            USING ERRCODE = '42704';
    END IF;
    IF NOT pg_has_role(session_user, p_role, 'MEMBER') THEN
        RAISE EXCEPTION 'the broker''s login % cannot act as role %',
                quote_ident(session_user), quote_ident(role)
            USING ERRCODE = '42501',
                  HINT = format('GRANT %I TO %I;', role, session_user);
    END IF;
    IF EXISTS (SELECT 1 FROM pg_proc
                WHERE pronamespace = 'broker_exec'::regnamespace AND proname = runner
                  AND pronargs = 0 AND proowner = p_role
                  AND prosrc LIKE '%pgsql-broker runner 2%') THEN
        RETURN;
    END IF;
    -- A runner owned by anyone else (e.g. a recycled oid) is not trusted.
    EXECUTE format('DROP FUNCTION IF EXISTS broker_exec.%I()', runner);
    EXECUTE format(
        'CREATE FUNCTION broker_exec.%I() RETURNS void
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = "$user", public
         AS $runner$
         -- pgsql-broker runner 2
         BEGIN
             EXECUTE pg_catalog.current_setting(''broker.execute_str'');
             -- Nothing of the job may run later as the broker: deferred triggers fire and
             -- held cursors close here, as the job''s role.
             EXECUTE ''SET CONSTRAINTS ALL IMMEDIATE; CLOSE ALL'';
         END
         $runner$', runner);
    EXECUTE format('REVOKE ALL ON FUNCTION broker_exec.%I() FROM PUBLIC', runner);
    EXECUTE format('GRANT EXECUTE ON FUNCTION broker_exec.%I() TO %I', runner, session_user);
    -- Giving a function away needs the new owner to be allowed to create it there.
    owns_schema_create := has_schema_privilege(p_role, 'broker_exec', 'CREATE');
    IF NOT owns_schema_create THEN
        EXECUTE format('GRANT CREATE ON SCHEMA broker_exec TO %I', role);
    END IF;
    EXECUTE format('ALTER FUNCTION broker_exec.%I() OWNER TO %I', runner, role);
    IF NOT owns_schema_create THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA broker_exec FROM %I', role);
    END IF;
END
$$;

-- Starts a claimed job in the caller's transaction (p_local) or session: locks its row (so
-- recovery knows it is alive; a row some other session holds is not waited for), records when
-- it started and exposes it to its SQL through settings. A transactional job's SQL goes to its
-- runner through broker.execute_str; the caller gets it back for a job outside a transaction,
-- which runs in the broker's own session where RESET ROLE is possible, so it may only run as a
-- role that already has every privilege of the broker's login (its role is set here).
CREATE OR REPLACE FUNCTION broker_run(p_id bigint, p_claim bigint, p_local boolean DEFAULT true,
                                      p_timeout_ms bigint DEFAULT 0)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j record;
    role name;
    job_sql text;
BEGIN
    IF p_local THEN
        -- What the previous job of this transaction left in the session goes first.
        PERFORM broker_reset_session();
    END IF;
    SELECT b.status, b.claim, b.run_as, b.owner, b.job_language, b.execute_str, b.user_login,
           EXISTS (SELECT 1 FROM broker_cancel_requests r WHERE r.job_id = b.id) AS cancelled
      INTO j FROM broker_jobs b WHERE b.id = p_id FOR NO KEY UPDATE OF b SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM broker_jobs WHERE id = p_id) THEN
            RAISE EXCEPTION 'job % is locked by another session; it runs once that lock is gone', p_id
                USING ERRCODE = '55P03';
        END IF;
        RAISE EXCEPTION 'job % no longer exists', p_id USING ERRCODE = '55000';
    END IF;
    IF j.status <> 'running' OR j.claim IS DISTINCT FROM p_claim THEN
        RAISE EXCEPTION 'job % is not held by claim % (status %)', p_id, p_claim, j.status
            USING ERRCODE = '55000';
    END IF;
    IF j.cancelled THEN
        RAISE EXCEPTION 'job % was cancelled before it started', p_id USING ERRCODE = '57014';
    END IF;
    role := coalesce(j.run_as, j.owner);
    IF to_regrole(quote_ident(role)) IS NULL THEN
        RAISE EXCEPTION 'role % of job % does not exist', quote_ident(role), p_id
            USING ERRCODE = '42704';
    END IF;
    IF NOT p_local AND NOT pg_has_role(role, session_user, 'MEMBER') THEN
        RAISE EXCEPTION 'job % runs outside a transaction in the broker''s session, so its role % must already have the privileges of %',
                p_id, quote_ident(role), quote_ident(session_user)
            USING ERRCODE = '42501',
                  HINT = 'Submit it with transactional => true, or as a role that is a member of the broker''s login.';
    END IF;
    job_sql := CASE WHEN j.job_language = 'plpgsql'
                    THEN 'DO LANGUAGE plpgsql ' || quote_literal(j.execute_str)
                    ELSE j.execute_str END;
    -- statement_timeout applies from the caller's next statement, the job's: PostgreSQL arms
    -- it afresh for each statement of a multi-statement query.
    -- A transactional job's SQL reaches its runner through broker.execute_str.
    PERFORM set_config('application_name', left('pgsql-broker job ' || p_id, 63), p_local),
            set_config('broker.job_id', p_id::text, p_local),
            set_config('broker.user_login', coalesce(j.user_login, ''), p_local),
            set_config('statement_timeout', greatest(p_timeout_ms, 0)::text, p_local),
            set_config('broker.execute_str', CASE WHEN p_local THEN job_sql ELSE '' END, true);
    IF p_local THEN
        -- The row is written once, when the batch ends (broker_complete), with this start
        -- time: within the batch's transaction nobody could see it earlier anyway.
        RETURN extract(epoch FROM clock_timestamp())::text;
    END IF;
    -- Outside a transaction the start commits at once: operators see it running.
    UPDATE broker_jobs SET started_at = clock_timestamp(), backend_pid = pg_backend_pid()
     WHERE id = p_id;
    -- set_config takes the role name as a value, never as SQL text.
    PERFORM set_config('role', role, false);
    RETURN job_sql;
END
$$;

-- Undoes what a job may have left in the session that outlives it and that neither a rollback
-- nor the caller's RESET ALL (a top-level statement after the job's) undoes: prepared
-- statements, temp objects (pg_temp comes first in a default search_path, so a temp table
-- could stand in for another role's table), LISTEN, session advisory locks. Cursors close in
-- the runner or with a rolled-back savepoint. Runs before each job and when a batch ends.
CREATE OR REPLACE FUNCTION broker_reset_session() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    stmt text;
    stmts text[];
    unlocked boolean;
    listening boolean;
BEGIN
    SELECT pg_advisory_unlock_all() IS NULL,
           (SELECT array_agg(name) FROM pg_prepared_statements WHERE from_sql),
           EXISTS (SELECT 1 FROM pg_listening_channels())
      INTO STRICT unlocked, stmts, listening;
    FOREACH stmt IN ARRAY coalesce(stmts, '{}') LOOP
        EXECUTE format('DEALLOCATE %I', stmt);
    END LOOP;
    IF pg_my_temp_schema() <> 0 THEN
        EXECUTE 'DISCARD TEMP';
    END IF;
    IF listening THEN
        UNLISTEN *;
    END IF;
END
$$;

-- Records the completion of transactional jobs that ran in the caller's transaction, in one
-- statement when the worker's batch ends (its COMMIT follows): p_started is when each job's
-- SQL began (seconds since the epoch, as broker_run returned it), p_ran_for how long it ran
-- (the broker timed it).
-- Returns the ids recorded completed; a job missing there changed hands meanwhile.
CREATE OR REPLACE FUNCTION broker_complete(p_ids bigint[], p_claims bigint[],
                                           p_started float8[], p_ran_for float8[])
RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    done bigint[];
BEGIN
    PERFORM broker_reset_session();
    -- `id = ANY` and array positions rather than a join with unnest(): the rows are found by
    -- index, whatever the planner guesses of the arrays' length.
    WITH finished AS (
        UPDATE broker_jobs j
           SET status = 'completed', error_text = NULL, backend_pid = NULL,
               started_at = to_timestamp(p_started[array_position(p_ids, j.id)]),
               completed_at = to_timestamp(p_started[array_position(p_ids, j.id)]
                                           + p_ran_for[array_position(p_ids, j.id)])
         WHERE j.id = ANY (p_ids) AND j.status = 'running'
           AND j.claim = p_claims[array_position(p_ids, j.id)]
        RETURNING j.id
    ), late AS (
        -- A cancel that came too late for its job is dropped with it.
        DELETE FROM broker_cancel_requests r USING finished f WHERE r.job_id = f.id
    )
    SELECT array_agg(id) INTO done FROM finished;
    RETURN coalesce(done, '{}');
END
$$;

-- Records the end of an attempt: 'completed', 'failed' (retried with backoff while attempts
-- remain; cancelled if a cancel was asked for) or 'pending' (handed back unstarted or rolled
-- back by shutdown), after clearing what the job left in the session. Every failed attempt's
-- error is kept. Returns the job's status afterwards: 'locked' when another session holds the
-- row (recovery settles it later), the unchanged status when the claim is no longer held.
CREATE OR REPLACE FUNCTION broker_set(p_id bigint, p_claim bigint, p_status text,
                                      p_error text DEFAULT NULL, p_ran_for float8 DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j record;
    cancelled_by name;
    started timestamptz;
    new_status text;
    completed boolean;
BEGIN
    PERFORM broker_reset_session();
    IF p_status = 'completed' THEN
        -- The common case, in one statement: broker_run holds the row for this transaction.
        WITH done AS (
            UPDATE broker_jobs SET status = 'completed', error_text = NULL, backend_pid = NULL,
                                   started_at = coalesce(started_at, statement_timestamp()),
                                   completed_at = clock_timestamp()
             WHERE id = p_id AND status = 'running' AND claim = p_claim
            RETURNING id
        ), late AS (
            -- A cancel that came too late for the job is dropped with it.
            DELETE FROM broker_cancel_requests r USING done WHERE r.job_id = done.id
        )
        SELECT count(*) = 1 INTO completed FROM done;
        IF completed THEN
            RETURN 'completed';
        END IF;
    END IF;
    SELECT b.status, b.claim, b.attempts, b.max_attempts, b.job_queue, b.started_at
      INTO j FROM broker_jobs b WHERE b.id = p_id FOR NO KEY UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN CASE WHEN EXISTS (SELECT 1 FROM broker_jobs WHERE id = p_id) THEN 'locked' END;
    END IF;
    IF j.status <> 'running' OR j.claim IS DISTINCT FROM p_claim THEN
        RETURN j.status;
    END IF;
    -- A transactional job's start is written with its end: from the broker's timing when it
    -- failed, else the start of the message that ran it (this statement is part of it).
    started := coalesce(j.started_at,
                        clock_timestamp() - p_ran_for * interval '1 second',
                        statement_timestamp());
    DELETE FROM broker_cancel_requests WHERE job_id = p_id RETURNING requested_by INTO cancelled_by;
    IF p_status = 'completed' THEN
        UPDATE broker_jobs SET status = 'completed', error_text = NULL, started_at = started,
                               completed_at = clock_timestamp(), backend_pid = NULL
         WHERE id = p_id;
        RETURN 'completed';
    ELSIF p_status IN ('failed', 'pending') AND cancelled_by IS NOT NULL THEN
        -- Also when shutdown rolled the job back: the cancel was asked for, so it stands.
        UPDATE broker_jobs SET status = 'cancelled', started_at = started,
                               completed_at = clock_timestamp(), backend_pid = NULL,
                               error_text = format('cancelled by %s while running', cancelled_by)
         WHERE id = p_id
        RETURNING status INTO new_status;
    ELSIF p_status = 'failed' AND j.attempts < j.max_attempts THEN
        -- Retried after a backoff with jitter: 2^attempt seconds ±25 %, at most an hour.
        UPDATE broker_jobs
           SET status = 'pending', instance_id = NULL, claim = NULL, delayed = true,
               error_text = p_error, backend_pid = NULL, started_at = started,
               attempt_errors = attempt_errors || format('attempt %s: %s', j.attempts, p_error),
               run_after = clock_timestamp()
                           + least(3600, power(2, j.attempts) * (0.75 + random() / 2))
                             * interval '1 second'
         WHERE id = p_id
        RETURNING status INTO new_status;
        PERFORM pg_notify('broker_jobs', 'delayed');
    ELSIF p_status = 'failed' THEN
        UPDATE broker_jobs
           SET status = 'failed', error_text = p_error, backend_pid = NULL, started_at = started,
               completed_at = clock_timestamp(),
               attempt_errors = attempt_errors || format('attempt %s: %s', j.attempts, p_error)
         WHERE id = p_id
        RETURNING status INTO new_status;
    ELSIF p_status = 'pending' THEN
        UPDATE broker_jobs SET status = 'pending', attempts = attempts - 1, claim = NULL,
                               started_at = NULL, instance_id = NULL, backend_pid = NULL,
                               delayed = false
         WHERE id = p_id
        RETURNING status INTO new_status;
        PERFORM pg_notify('broker_jobs', j.job_queue::text);
    ELSE
        RAISE EXCEPTION 'broker_set: status % is not one of completed, failed, pending',
                quote_literal(p_status)
            USING ERRCODE = '22023';
    END IF;
    RETURN new_status;
END
$$;

-- Running jobs whose cancel was asked for, with how long ago; the listener of the active
-- instance cancels their statements, and ends their backends if a job ignores that.
CREATE OR REPLACE FUNCTION broker_cancel_requested(OUT job_id bigint, OUT waited float8)
RETURNS SETOF record
LANGUAGE sql STABLE AS $$
    SELECT r.job_id, extract(epoch FROM now() - r.requested_at)::float8
      FROM broker_cancel_requests r
      JOIN broker_jobs j ON j.id = r.job_id AND j.status = 'running'
$$;

-- Deletes up to p_batch finished jobs past their retention (NULL interval = keep forever).
CREATE OR REPLACE FUNCTION broker_purge(p_completed interval, p_failed interval, p_batch integer)
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
    -- Rows of instances long gone go with the failed jobs' retention (their jobs keep a NULL
    -- instance_id); the newest row stays, for `status`.
    IF n < p_batch THEN
        DELETE FROM broker_queueinstance
         WHERE id IN (SELECT id FROM broker_queueinstance
                       WHERE status <> 'active' AND stopped_at < now() - p_failed
                         AND id < (SELECT max(id) FROM broker_queueinstance)
                       LIMIT p_batch - n);
    END IF;
    RETURN n;
END
$$;

-- Fires the due time p_due of a schedule inside the broker's transaction (which holds the
-- schedule's row lock): makes its job, unless overlap is off and the previous job is still
-- pending or running, and moves next_run to p_next. The job and the advance commit together,
-- so each due time fires exactly once, also across crashes and failover. The job runs as the
-- schedule's run_as, else its owner (the broker's login only inserts it).
-- outcome: 'fired', 'overlap' (skipped), 'duplicate' (the slot had a job), 'stale' (changed).
CREATE OR REPLACE FUNCTION broker_fire_schedule(p_id bigint, p_due timestamptz, p_next timestamptz,
                                     OUT job_id bigint, OUT outcome text)
LANGUAGE plpgsql AS $$
DECLARE
    s broker_schedule;
BEGIN
    SELECT * INTO s FROM broker_schedule WHERE id = p_id FOR UPDATE;
    IF NOT FOUND OR NOT s.enabled OR s.next_run IS DISTINCT FROM p_due THEN
        outcome := 'stale';
        RETURN;
    END IF;
    IF NOT s.overlap AND EXISTS (SELECT 1 FROM broker_jobs j
                                  WHERE j.schedule_id = p_id AND j.status IN ('pending', 'running')) THEN
        outcome := 'overlap';
    ELSE
        INSERT INTO broker_jobs (job_name, execute_str, job_queue, job_priority, job_language,
                                 run_as, user_login, schedule_id, scheduled_for)
        VALUES (s.schedule_name, s.execute_str, s.job_queue, s.job_priority, s.job_language,
                coalesce(s.run_as, s.owner), s.user_login, s.id, p_due)
        ON CONFLICT (schedule_id, scheduled_for) WHERE scheduled_for IS NOT NULL DO NOTHING
        RETURNING id INTO job_id;
        outcome := CASE WHEN job_id IS NULL THEN 'duplicate' ELSE 'fired' END;
    END IF;
    UPDATE broker_schedule
       SET next_run = p_next,
           last_run = CASE WHEN job_id IS NULL THEN last_run ELSE p_due END
     WHERE id = p_id;
END
$$;


-- Settles dependents whose bookkeeping missed an end: an edge committed after its dependency
-- ended (the dependency's trigger could not see it), or a dependency deleted. Recomputes
-- `waiting` from the edges and cancels dependents of failed or cancelled jobs. Run each poll.
CREATE OR REPLACE FUNCTION broker_settle_dependencies() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    WITH counts AS (
        SELECT w.id,
               count(dj.id) FILTER (WHERE dj.status <> 'completed') AS open,
               min(dj.id) FILTER (WHERE dj.status IN ('failed', 'cancelled')) AS bad
          FROM broker_jobs w
          LEFT JOIN broker_job_dependencies d ON d.job_id = w.id
          LEFT JOIN broker_jobs dj ON dj.id = d.depends_on
         WHERE w.status = 'pending' AND w.waiting > 0
         GROUP BY w.id
    )
    , todo AS (
        -- A row some other session holds is left for a later poll, never waited for.
        SELECT j.id, c.open, c.bad FROM broker_jobs j JOIN counts c ON c.id = j.id
         WHERE j.status = 'pending' AND (c.bad IS NOT NULL OR c.open <> j.waiting)
           FOR NO KEY UPDATE OF j SKIP LOCKED
    )
    UPDATE broker_jobs j
       SET waiting      = CASE WHEN c.bad IS NULL THEN c.open ELSE j.waiting END,
           status       = CASE WHEN c.bad IS NULL THEN j.status ELSE 'cancelled' END,
           completed_at = CASE WHEN c.bad IS NULL THEN j.completed_at ELSE now() END,
           error_text   = CASE WHEN c.bad IS NULL THEN j.error_text
                               ELSE format('dependency %s %s', c.bad,
                                           (SELECT status FROM broker_jobs WHERE id = c.bad)) END
      FROM todo c
     WHERE j.id = c.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- ---------------------------------------------------------------- privileges

-- Dependency bookkeeping is the broker's, whoever's change set it off: these run as the
-- schema's owner (with the pinned search_path below). So does the id check, which reads the
-- identity sequence.
ALTER FUNCTION broker_job_dependencies_insert() SECURITY DEFINER;
ALTER FUNCTION broker_jobs_after_end() SECURITY DEFINER;
ALTER FUNCTION broker_job_id_assigned(bigint) SECURITY DEFINER;
-- A retry's bookkeeping reads dependencies and clears cancels the caller may not see; the
-- caller's right to retry was checked by row-level security and broker_jobs_before_update.
ALTER FUNCTION broker_jobs_retry() SECURITY DEFINER;

-- The broker's own steps around a job never wait long on a lock some other session holds
-- (their row locks are SKIP LOCKED already; this bounds what remains, e.g. catalog locks).
ALTER FUNCTION broker_run(bigint, bigint, boolean, bigint) SET lock_timeout = '5s';
ALTER FUNCTION broker_set(bigint, bigint, text, text, float8) SET lock_timeout = '5s';
ALTER FUNCTION broker_prepare_runner(oid) SET lock_timeout = '5s';
-- An operator's retry reports a job some session holds locked rather than wait for it.
ALTER FUNCTION broker_retry_job(bigint) SET lock_timeout = '5s';

-- Every function resolves names in pg_catalog, then the install schema, then (last) pg_temp:
-- a caller's temp table named like ours, or its search_path, must not redirect the broker.
DO $search_path$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.proname LIKE 'broker\_%'
                AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %I, pg_temp', f,
                       current_schema());
        -- Their statements run thousands of times a second with different ids: a generic
        -- plan, made once per session, instead of planning each call anew.
        EXECUTE format('ALTER FUNCTION %s SET plan_cache_mode = force_generic_plan', f);
    END LOOP;
END
$search_path$;

-- PUBLIC may execute nothing here; submitters get their API, the broker's login (the owner)
-- keeps the rest.
DO $grants$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.proname LIKE 'broker\_%'
                AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.proname IN ('broker_add_job', 'broker_cancel_job', 'broker_retry_job',
                                  'broker_job_for_caller',
                                  'broker_add_schedule',
                                  'broker_remove_schedule', 'broker_enable_schedule',
                                  'broker_disable_schedule')
                AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO broker_submitter', f);
    END LOOP;
END
$grants$;
-- The checks of the insert triggers run as whoever inserts; they only ever raise errors.
GRANT EXECUTE ON FUNCTION broker_check_job_text(text, text, text) TO PUBLIC;
GRANT EXECUTE ON FUNCTION broker_max_job_size() TO PUBLIC;
GRANT EXECUTE ON FUNCTION broker_caller_is_broker() TO PUBLIC;
GRANT EXECUTE ON FUNCTION broker_job_id_assigned(bigint) TO PUBLIC;
