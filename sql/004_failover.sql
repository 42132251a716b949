-- pgsql-broker schema: failover. Jobs outside a transaction that are safe to run again, and
-- recovery that leaves alone the jobs the recovering process itself still runs (after its
-- listener reconnected and registered again under a new instance id).

ALTER TABLE broker_jobs
    -- Only matters for transactional = false: when the broker dies while such a job runs, the
    -- job is pending again instead of failed. Set it for jobs whose effects may apply twice.
    ADD COLUMN retry_on_crash boolean NOT NULL DEFAULT false;

-- As in version 1, plus: jobs in p_in_flight are never touched (neither terminated nor
-- recovered), whatever instance id they carry, because the caller is running them right now;
-- and a non-transactional job with retry_on_crash is pending again instead of failed.
CREATE OR REPLACE FUNCTION broker_recover(p_instance bigint, p_in_flight bigint[] DEFAULT '{}')
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    mine bigint[] := coalesce(p_in_flight, '{}');
BEGIN
    IF NOT broker_holds_instance_lock() THEN
        RAISE EXCEPTION 'broker_recover must be called by the active instance''s listener'
            USING ERRCODE = '55000';
    END IF;
    -- A dead instance's job may still be executing in a backend the server has not yet noticed
    -- is orphaned; it holds the row lock and would run on unobserved. Only a caller holding the
    -- instance lock (so every other instance is gone) gets here.
    PERFORM pg_terminate_backend(a.pid)
       FROM broker_jobs j
       JOIN pg_stat_activity a ON a.pid = j.backend_pid
      WHERE j.status = 'running' AND j.instance_id IS DISTINCT FROM p_instance
        AND NOT j.id = ANY (mine)
        AND a.application_name = left('pgsql-broker job ' || j.id, 63)
        AND a.pid <> pg_backend_pid();
    WITH orphans AS (
        SELECT j.id FROM broker_jobs j
         WHERE j.status = 'running'
           AND NOT j.id = ANY (mine)
           AND (j.instance_id IS DISTINCT FROM p_instance
                -- the grace covers the moment between a claim and its worker noting it
                OR j.started_at < now() - interval '10 seconds')
         FOR UPDATE SKIP LOCKED
    )
    UPDATE broker_jobs j
       SET status         = CASE WHEN j.transactional OR j.retry_on_crash THEN 'pending'
                                 ELSE 'failed' END,
           attempts       = CASE WHEN j.transactional OR j.retry_on_crash THEN j.attempts - 1
                                 ELSE j.attempts END,
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
     WHERE j.id = o.id;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;

-- As in version 1, plus p_in_flight: a process whose listener lost its connection registers
-- again while its workers may still run jobs under the old id; those must not be recovered.
DROP FUNCTION broker_register_instance(text, text, integer, text);
CREATE FUNCTION broker_register_instance(p_name text, p_host text, p_pid integer, p_version text,
                                         p_in_flight bigint[] DEFAULT '{}')
RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    other broker_queueinstance;
    new_id bigint;
BEGIN
    IF NOT pg_try_advisory_lock(broker_instance_lock_key()) THEN
        SELECT * INTO other FROM broker_queueinstance WHERE status = 'active' ORDER BY id DESC LIMIT 1;
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
    PERFORM broker_recover(new_id, p_in_flight);
    RETURN new_id;
END
$$;

REVOKE ALL ON FUNCTION broker_register_instance(text, text, integer, text, bigint[]) FROM PUBLIC;
