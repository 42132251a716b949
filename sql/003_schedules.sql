-- pgsql-broker schema, version 3: cron schedules.
-- The broker parses cron expressions and computes fire times (in Rust, see src/cron.rs); the
-- database keeps the schedules, decides who owns them, and records each firing together with
-- the job it made, in one transaction.

ALTER TABLE broker_schedule
    -- false: a due time passes without a job while the schedule's previous job is still
    -- pending or running.
    ADD COLUMN overlap    boolean NOT NULL DEFAULT false,
    -- Why the broker disabled the schedule (bad cron or zone, job refused); NULL when fine.
    ADD COLUMN last_error text;

ALTER TABLE broker_jobs
    -- The due time a schedule made this job for; NULL for jobs not made by a schedule.
    ADD COLUMN scheduled_for timestamptz;

-- A due time makes at most one job, whatever goes wrong elsewhere.
CREATE UNIQUE INDEX broker_jobs_schedule_slot
    ON broker_jobs (schedule_id, scheduled_for) WHERE scheduled_for IS NOT NULL;
-- The overlap check at each firing reads only a schedule's unfinished jobs.
CREATE INDEX broker_jobs_schedule_active
    ON broker_jobs (schedule_id) WHERE schedule_id IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX broker_schedule_next_run
    ON broker_schedule (next_run) WHERE enabled;

-- Every way into or through broker_schedule (the helpers or plain INSERT/UPDATE) passes here.
-- The owner is whoever last wrote what runs or as whom: a schedule never runs SQL with the
-- privileges of a role that did not write it.
CREATE FUNCTION broker_schedule_check() RETURNS trigger
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
    IF NEW.job_language IS NULL OR NEW.job_language NOT IN ('sql', 'plpgsql') THEN
        RAISE EXCEPTION 'job_language % is not supported', coalesce(quote_literal(NEW.job_language), 'NULL')
            USING ERRCODE = '22023',
                  HINT = 'Use ''sql'' (statements run in order) or ''plpgsql'' (the body of a DO block).';
    END IF;
    IF NEW.execute_str IS NULL OR btrim(NEW.execute_str) = '' THEN
        RAISE EXCEPTION 'execute_str of schedule % is empty', quote_literal(NEW.schedule_name)
            USING ERRCODE = '22023';
    END IF;
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

CREATE TRIGGER broker_schedule_check
    BEFORE INSERT OR UPDATE ON broker_schedule
    FOR EACH ROW EXECUTE FUNCTION broker_schedule_check();

-- A schedule to plan (new, changed, enabled) or to fire now wakes the broker at once rather
-- than at its next poll. The broker's own planning sets next_run in the future: no echo.
CREATE FUNCTION broker_schedule_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('broker_jobs', 'schedule');
    RETURN NULL;
END
$$;

CREATE TRIGGER broker_schedule_notify
    AFTER INSERT OR UPDATE ON broker_schedule
    FOR EACH ROW WHEN (NEW.enabled AND (NEW.next_run IS NULL OR NEW.next_run <= now()))
    EXECUTE FUNCTION broker_schedule_notify();

CREATE FUNCTION broker_add_schedule(
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
CREATE FUNCTION broker_remove_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH gone AS (DELETE FROM broker_schedule s WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM gone)
$$;

-- Enabling clears last_error; the next fire time is the first one from now on.
CREATE FUNCTION broker_enable_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH hit AS (UPDATE broker_schedule s SET enabled = true WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM hit)
$$;

CREATE FUNCTION broker_disable_schedule(schedule_id bigint) RETURNS boolean
LANGUAGE sql AS $$
    WITH hit AS (UPDATE broker_schedule s SET enabled = false WHERE s.id = $1 RETURNING 1)
    SELECT EXISTS (SELECT 1 FROM hit)
$$;

-- Fires the due time p_due of a schedule inside the broker's transaction (which holds the
-- schedule's row lock): makes its job, unless overlap is off and the previous job is still
-- pending or running, and moves next_run to p_next. The job and the advance commit together,
-- so each due time fires exactly once, also across crashes and failover. The job runs as the
-- schedule's run_as, else its owner (the broker's login only inserts it).
-- outcome: 'fired', 'overlap' (skipped), 'duplicate' (the slot had a job), 'stale' (changed).
CREATE FUNCTION broker_fire_schedule(p_id bigint, p_due timestamptz, p_next timestamptz,
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

REVOKE ALL ON FUNCTION broker_fire_schedule(bigint, timestamptz, timestamptz) FROM PUBLIC;
