-- The wallet service's roles: run once per PostgreSQL cluster by a superuser, before the
-- first `wallet migrate`:
--
--     psql -v ON_ERROR_STOP=1 -f sql/bootstrap/roles.sql
--
-- It is idempotent: a missing role is created, an existing one is given the attributes
-- below (only if it differs), a missing membership is granted, a membership's INHERIT
-- option is set as below. Run it again after upgrading PostgreSQL from 15 to 16 or later
-- (it then takes wallet_api's inherited wallet_auditor privileges away). It lives apart
-- from sql/*.sql because `wallet migrate` re-applies those, as the owner, who may not
-- create roles. Plain SQL (no psql variables or meta-commands): psql -f, a driver, or
-- the postgres image's /docker-entrypoint-initdb.d run it alike.
--
--   wallet_owner    LOGIN; no SUPERUSER, CREATEROLE, CREATEDB, REPLICATION or BYPASSRLS.
--                   Owns the database and every object `wallet migrate` creates; the only
--                   role that runs `wallet migrate`.
--   wallet_app      NOLOGIN. Executes the ledger functions and uses the job queue; reads
--                   and writes no wallet table itself.
--   wallet_auditor  NOLOGIN. Reads everything and runs the checks.
--   wallet_api      LOGIN, member of wallet_app and wallet_auditor. Its sessions act as
--                   wallet_app; the API's /v1/ledger/verify becomes wallet_auditor for one
--                   read-only transaction (SET LOCAL ROLE). On PostgreSQL 16 and later the
--                   wallet_auditor membership is granted WITH INHERIT FALSE, so outside that
--                   transaction the login reads no wallet table; PostgreSQL 15 has no such
--                   option, and there it inherits wallet_auditor's reads.
--   wallet_worker   LOGIN, member of wallet_app (`wallet worker`).
--   wallet_audit    LOGIN, member of wallet_auditor (`wallet verify`, a DBA, a tool);
--                   statement_timeout 15min unless its session sets another.
--
-- No passwords here. Set each login's from psql, which hashes it before sending it, so it
-- reaches neither the server log nor the shell history:
--     \password wallet_owner      (and wallet_api, wallet_worker, wallet_audit)
--
-- Then, once per database, as the superuser:
--     CREATE DATABASE wallet OWNER wallet_owner;
--     -- On a database created on, or restored from, PostgreSQL 14 or older, PUBLIC may
--     -- create objects in schema public. The ledger never searches public (see
--     -- tests/sql/test_privileges.py), but nothing needs that grant either:
--     \c wallet
--     REVOKE CREATE ON SCHEMA public FROM PUBLIC;
-- and migrate as the owner: DATABASE_URL=postgresql://wallet_owner@HOST/wallet wallet migrate
-- `wallet migrate` names the session holding its lock when it gives up waiting; to see the
-- client address and times of another role's session too: GRANT pg_read_all_stats TO wallet_owner.
-- A database migrated earlier by a superuser has its objects owned by that superuser: keep
-- migrating it as that role, or give schemas wallet and procrastinate, their objects and
-- yoyo's tables in public to wallet_owner (ALTER ... OWNER TO) first.

DO $bootstrap$
DECLARE
    v_role  record;
    v_grant record;
BEGIN
    -- Two runs in the same database take turns. Runs from different databases may still
    -- meet: each step below tolerates a role or membership created meanwhile.
    PERFORM pg_catalog.pg_advisory_xact_lock(8602275976068756079);  -- b"walletro" as a number

    FOR v_role IN
        SELECT * FROM (VALUES
            ('wallet_owner',   true),
            ('wallet_app',     false),
            ('wallet_auditor', false),
            ('wallet_api',     true),
            ('wallet_worker',  true),
            ('wallet_audit',   true)
        ) AS wanted (name, can_login)
    LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I', v_role.name);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile (wallet migrate creates wallet_app and wallet_auditor too)
            END;
        END IF;
        IF NOT EXISTS (
            SELECT FROM pg_catalog.pg_roles
            WHERE rolname = v_role.name AND rolcanlogin = v_role.can_login
              AND rolinherit AND NOT (rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls))
        THEN
            EXECUTE format(
                'ALTER ROLE %I %s INHERIT NOSUPERUSER NOCREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS',
                v_role.name, CASE WHEN v_role.can_login THEN 'LOGIN' ELSE 'NOLOGIN' END);
        END IF;
    END LOOP;

    FOR v_grant IN
        SELECT * FROM (VALUES
            ('wallet_app',     'wallet_api',    true),
            ('wallet_auditor', 'wallet_api',    false),
            ('wallet_app',     'wallet_worker', true),
            ('wallet_auditor', 'wallet_audit',  true)
        ) AS wanted (granted, member, inherits)
    LOOP
        IF pg_catalog.current_setting('server_version_num')::integer < 160000 THEN
            -- PostgreSQL 15: a membership has no options (every login here is INHERIT).
            CONTINUE WHEN EXISTS (
                SELECT FROM pg_catalog.pg_auth_members
                WHERE roleid = v_grant.granted::regrole AND member = v_grant.member::regrole);
            BEGIN
                EXECUTE format('GRANT %I TO %I', v_grant.granted, v_grant.member);
            EXCEPTION WHEN unique_violation THEN
                NULL;  -- granted meanwhile
            END;
        ELSE
            -- One grant may SET the role and inherits as wanted, and none inherits otherwise.
            -- Granting again updates the options of this grantor's grant.
            CONTINUE WHEN EXISTS (
                SELECT FROM pg_catalog.pg_auth_members
                WHERE roleid = v_grant.granted::regrole AND member = v_grant.member::regrole
                  AND inherit_option = v_grant.inherits AND set_option)
            AND NOT EXISTS (
                SELECT FROM pg_catalog.pg_auth_members
                WHERE roleid = v_grant.granted::regrole AND member = v_grant.member::regrole
                  AND inherit_option <> v_grant.inherits);
            BEGIN
                EXECUTE format('GRANT %I TO %I WITH INHERIT %s, SET TRUE',
                    v_grant.granted, v_grant.member, upper(v_grant.inherits::text));
            EXCEPTION WHEN unique_violation THEN
                NULL;  -- granted meanwhile
            END;
            -- A grant by another grantor keeps its own options: say so rather than loop.
            IF EXISTS (
                SELECT FROM pg_catalog.pg_auth_members
                WHERE roleid = v_grant.granted::regrole AND member = v_grant.member::regrole
                  AND inherit_option <> v_grant.inherits)
            THEN
                RAISE WARNING '% is granted % with INHERIT % by another grantor as well',
                    v_grant.member, v_grant.granted, NOT v_grant.inherits
                    USING HINT = format('REVOKE %I FROM %I GRANTED BY <that grantor>', v_grant.granted, v_grant.member);
            END IF;
        END IF;
    END LOOP;

    -- The audits read the whole ledger; PostgreSQL ignores a statement_timeout set on a
    -- function, so the auditor's login brings one (a session may still SET a longer one).
    IF NOT EXISTS (
        SELECT FROM pg_catalog.pg_db_role_setting AS s
        WHERE s.setrole = 'wallet_audit'::regrole AND s.setdatabase = 0
          AND 'statement_timeout=15min' = ANY (s.setconfig))
    THEN
        ALTER ROLE wallet_audit SET statement_timeout = '15min';
    END IF;
END
$bootstrap$;
