-- Roles for those who use the ledger (SPEC 8). Both are NOLOGIN: operators grant them
-- to login roles. Roles belong to the cluster, not the database, so another database
-- may have created them already (or be creating them right now).
-- depends: 0001_ledger_schema

DO $$
BEGIN
    CREATE ROLE wallet_app NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
END
$$;

DO $$
BEGIN
    CREATE ROLE wallet_auditor NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL;
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
