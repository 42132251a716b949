-- pgsql-broker schema: the privilege model.
--
-- A transactional job runs inside a SECURITY DEFINER function owned by the job's role, where
-- PostgreSQL forbids SET ROLE, RESET ROLE and SET SESSION AUTHORIZATION: the job cannot climb
-- back to the broker's login. Submitters get a role with exactly what they need, and row-level
-- security shows each one only its own jobs.

-- Roles are cluster-wide: another database's install may be making them at this very moment,
-- so each step tolerates having been done already (or concurrently) and is retried once.
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
CREATE SCHEMA broker_exec;
REVOKE ALL ON SCHEMA broker_exec FROM PUBLIC;

-- Makes sure the job's role has its runner, broker_exec.run_<oid>, and returns that oid. Runs in its own
-- short transaction before the job's, so creating a runner never waits on a running job.
CREATE FUNCTION broker_prepare_job(p_id bigint) RETURNS oid
LANGUAGE plpgsql AS $$
DECLARE
    j        broker_jobs;
    role_oid oid;
    role     name;
    runner   text;
    owns_schema_create boolean;
BEGIN
    SELECT * INTO j FROM broker_jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = '02000';
    END IF;
    role := coalesce(j.run_as, j.owner);
    SELECT oid INTO role_oid FROM pg_roles WHERE rolname = role;
    IF role_oid IS NULL THEN
        RAISE EXCEPTION 'role % of job % does not exist', quote_ident(role), p_id
            USING ERRCODE = '42704';
    END IF;
    IF NOT pg_has_role(session_user, role_oid, 'MEMBER') THEN
        RAISE EXCEPTION 'the broker''s login % cannot act as role % for job %',
                quote_ident(session_user), quote_ident(role), p_id
            USING ERRCODE = '42501',
                  HINT = format('GRANT %I TO %I;', role, session_user);
    END IF;
    runner := 'run_' || role_oid;
    IF EXISTS (SELECT 1 FROM pg_proc
                WHERE pronamespace = 'broker_exec'::regnamespace AND proname = runner
                  AND proowner = role_oid) THEN
        RETURN role_oid;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('pgsql-broker runner ' || role_oid, 0));
    -- A runner owned by anyone else (e.g. a recycled oid) is not trusted.
    EXECUTE format('DROP FUNCTION IF EXISTS broker_exec.%I(text)', runner);
    EXECUTE format(
        'CREATE FUNCTION broker_exec.%I(job_sql text) RETURNS void
         LANGUAGE plpgsql SECURITY DEFINER SET search_path = "$user", public
         AS $runner$BEGIN EXECUTE job_sql; END$runner$', runner);
    EXECUTE format('REVOKE ALL ON FUNCTION broker_exec.%I(text) FROM PUBLIC', runner);
    EXECUTE format('GRANT EXECUTE ON FUNCTION broker_exec.%I(text) TO %I', runner, session_user);
    -- Giving a function away needs the new owner to be allowed to create it there.
    owns_schema_create := has_schema_privilege(role_oid, 'broker_exec', 'CREATE');
    IF NOT owns_schema_create THEN
        EXECUTE format('GRANT CREATE ON SCHEMA broker_exec TO %I', role);
    END IF;
    EXECUTE format('ALTER FUNCTION broker_exec.%I(text) OWNER TO %I', runner, role);
    IF NOT owns_schema_create THEN
        EXECUTE format('REVOKE CREATE ON SCHEMA broker_exec FROM %I', role);
    END IF;
    RETURN role_oid;
END
$$;

-- Transactional jobs no longer switch role here (their runner does). A job outside a
-- transaction runs in the broker's own session, where RESET ROLE is possible, so it may only
-- run as a role that already has every privilege of the broker's login.
DROP FUNCTION broker_run(bigint, integer, boolean, bigint);
CREATE FUNCTION broker_run(p_id bigint, p_attempt integer, p_local boolean DEFAULT true,
                           p_default_timeout_ms bigint DEFAULT 0)
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
    timeout_ms bigint;
    role name;
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
    role := coalesce(j.run_as, j.owner);
    IF NOT p_local AND NOT pg_has_role(role, session_user, 'MEMBER') THEN
        RAISE EXCEPTION 'job % runs outside a transaction in the broker''s session, so its role % must already have the privileges of %',
                p_id, quote_ident(role), quote_ident(session_user)
            USING ERRCODE = '42501',
                  HINT = 'Submit it with transactional => true, or as a role that is a member of the broker''s login.';
    END IF;
    timeout_ms := coalesce(ceil(extract(epoch FROM j.timeout) * 1000)::bigint, p_default_timeout_ms);
    PERFORM set_config('statement_timeout', greatest(timeout_ms, 0)::text, p_local);
    PERFORM set_config('application_name', left('pgsql-broker job ' || p_id, 63), p_local);
    PERFORM set_config('broker.job_id', p_id::text, p_local);
    PERFORM set_config('broker.user_login', coalesce(j.user_login, ''), p_local);
    IF NOT p_local THEN
        -- set_config takes the role name as a value, never as SQL text.
        PERFORM set_config('role', role, false);
    END IF;
    RETURN CASE WHEN p_local THEN txid_current() END;
END
$$;

-- Whoever is not the broker (the tables' owner, a superuser or a broker_admin member) may
-- change a job in one way only: pending to cancelled.
CREATE FUNCTION broker_jobs_before_update() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    allowed broker_jobs;
BEGIN
    IF pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER')
       OR pg_has_role(current_user, 'broker_admin', 'MEMBER') THEN
        RETURN NEW;
    END IF;
    allowed := OLD;
    allowed.status := 'cancelled';
    allowed.error_text := NEW.error_text;
    allowed.completed_at := NEW.completed_at;
    IF OLD.status <> 'pending' OR NEW IS DISTINCT FROM allowed THEN
        RAISE EXCEPTION 'role % may only cancel pending job %, not change it otherwise',
                quote_ident(current_user), OLD.id
            USING ERRCODE = '42501', HINT = 'Use broker_cancel_job(id).';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER broker_jobs_before_update
    BEFORE UPDATE ON broker_jobs
    FOR EACH ROW EXECUTE FUNCTION broker_jobs_before_update();

-- Dependency bookkeeping is the broker's, whoever's change set it off: these run as the
-- schema's owner, with a pinned search_path.
ALTER FUNCTION broker_job_dependencies_insert() SECURITY DEFINER;
ALTER FUNCTION broker_jobs_after_end() SECURITY DEFINER;
DO $pin$
BEGIN
    EXECUTE format('ALTER FUNCTION broker_job_dependencies_insert() SET search_path = %I, pg_temp',
                   current_schema());
    EXECUTE format('ALTER FUNCTION broker_jobs_after_end() SET search_path = %I, pg_temp',
                   current_schema());
END
$pin$;

-- Now broker_admin members may cancel any job.
-- Cancels a job: a pending one at once, a running one by cancelling its statement (the
-- listener of the active instance delivers it). Returns the job's status afterwards.
CREATE OR REPLACE FUNCTION broker_cancel_job(p_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    j broker_jobs;
BEGIN
    SELECT * INTO j FROM broker_jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'job % does not exist', p_id USING ERRCODE = '02000';
    END IF;
    IF NOT (pg_has_role(current_user, j.owner, 'MEMBER')
            OR pg_has_role(current_user, 'broker_admin', 'MEMBER')) THEN
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

-- Row-level security: a submitter sees, links and cancels only its own jobs (or those of roles
-- it belongs to); broker_admin members see everything. The tables' owner is not subject to it.
ALTER TABLE broker_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_job_dependencies ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_cancel_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE broker_schedule ENABLE ROW LEVEL SECURITY;

CREATE POLICY broker_jobs_own ON broker_jobs
    USING (pg_has_role(current_user, owner, 'MEMBER')
           OR pg_has_role(current_user, 'broker_admin', 'MEMBER'));
CREATE POLICY broker_job_dependencies_own ON broker_job_dependencies
    USING (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id))
    WITH CHECK (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id)
                AND EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = depends_on));
CREATE POLICY broker_schedule_own ON broker_schedule
    USING (pg_has_role(current_user, owner, 'MEMBER')
           OR pg_has_role(current_user, 'broker_admin', 'MEMBER'));
CREATE POLICY broker_cancel_requests_own ON broker_cancel_requests
    USING (EXISTS (SELECT 1 FROM broker_jobs j WHERE j.id = job_id));

-- PUBLIC gets nothing; submitters get what submitting, cancelling and reading needs.
REVOKE ALL ON broker_jobs, broker_job_dependencies, broker_cancel_requests, broker_schedule,
              broker_queueinstance, broker_schema_version FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_add_job(text, text, integer, integer, text, name, text, bigint,
                                      timestamptz, integer, interval, boolean, bigint[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_cancel_job(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_prepare_job(bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION broker_run(bigint, integer, boolean, bigint) FROM PUBLIC;

GRANT SELECT, INSERT ON broker_jobs TO broker_submitter;
GRANT UPDATE (status, error_text, completed_at) ON broker_jobs TO broker_submitter;
GRANT SELECT, INSERT ON broker_job_dependencies, broker_cancel_requests TO broker_submitter;
GRANT EXECUTE ON FUNCTION broker_add_job(text, text, integer, integer, text, name, text, bigint,
                                         timestamptz, integer, interval, boolean, bigint[])
    TO broker_submitter;
GRANT EXECUTE ON FUNCTION broker_cancel_job(bigint) TO broker_submitter;
GRANT SELECT, INSERT, UPDATE, DELETE ON broker_schedule TO broker_submitter;
DO $schedules$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.proname IN ('broker_add_schedule', 'broker_remove_schedule',
                                  'broker_enable_schedule', 'broker_disable_schedule')
                AND p.pronamespace = current_schema()::regnamespace
    LOOP
        EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', f);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO broker_submitter', f);
    END LOOP;
END
$schedules$;

GRANT SELECT, INSERT, UPDATE, DELETE ON broker_jobs, broker_job_dependencies,
      broker_cancel_requests, broker_schedule TO broker_admin;
GRANT SELECT ON broker_queueinstance, broker_schema_version TO broker_admin;
