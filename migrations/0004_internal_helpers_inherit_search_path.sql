-- wallet.uuid_v7 is an internal helper like those of sql/ (see sql/posting.sql): it runs
-- inside the ledger's SECURITY DEFINER functions, whose search_path is pinned, and no
-- longer sets its own (each SET search_path is paid on every call).
-- depends: 0003_procrastinate

ALTER FUNCTION wallet.uuid_v7() RESET search_path;
