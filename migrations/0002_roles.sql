-- Roles for those who use the ledger (SPEC 8). Both are NOLOGIN: operators grant them
-- to login roles. Roles belong to the cluster, not the database, so another database
-- may have created them already (or be creating them right now).
-- An owner without CREATEROLE (see sql/bootstrap/roles.sql) migrates once they exist:
-- CREATE ROLE checks that privilege before it looks for a duplicate, so pg_roles is
-- looked at first, and CREATE ROLE is attempted only for a role that is missing.
-- depends: 0001_ledger_schema

DO $$
DECLARE
    v_role text;
BEGIN
    FOREACH v_role IN ARRAY ARRAY['wallet_app', 'wallet_auditor'] LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = v_role);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- created meanwhile by another database's migration
        END;
    END LOOP;
END
$$;

-- PostgreSQL lets PUBLIC execute every new function. Ours are granted one by one in sql/.
ALTER DEFAULT PRIVILEGES REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA wallet FROM PUBLIC;
REVOKE ALL ON SCHEMA wallet FROM PUBLIC;

-- wallet_app writes only through the SECURITY DEFINER functions of sql/: no table privileges.
GRANT USAGE ON SCHEMA wallet TO wallet_app, wallet_auditor;

-- wallet_auditor reads everything and runs the checks.
GRANT SELECT ON ALL TABLES IN SCHEMA wallet TO wallet_auditor;
ALTER DEFAULT PRIVILEGES IN SCHEMA wallet GRANT SELECT ON TABLES TO wallet_auditor;
