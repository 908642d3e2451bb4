"""A database's catalog as a set of (kind, object, detail) rows, for comparing two databases.

Everything a migration or sql/ can create, in every schema but PostgreSQL's own: schemas,
relations, columns (type, nullability, default, identity, position, statistics), constraints, indexes,
triggers, functions (signature, result, owner, privileges and full definition), types (domains,
enums, composite), sequences, views, policies, rules, extensions, default privileges, event
triggers, operators, casts, collations and comments; and, as data that belongs to the schema,
which migrations yoyo recorded and which components (procrastinate's version) were applied.
Names are printed with an empty search_path, so every one is schema-qualified. No oid, no
timestamp and no table content otherwise, so two databases built the same way compare equal.
"""

from __future__ import annotations

import psycopg

Row = tuple[str, str, str]

CATALOG_QUERY = r"""
WITH schemas AS (
    SELECT oid FROM pg_catalog.pg_namespace
    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
      AND nspname NOT LIKE 'pg\_temp\_%' AND nspname NOT LIKE 'pg\_toast\_temp\_%'
)
SELECT 'schema', pg_catalog.quote_ident(n.nspname),
       concat_ws(' | ', 'owner ' || n.nspowner::regrole::text, 'acl ' || coalesce(n.nspacl::text, 'default'))
FROM pg_catalog.pg_namespace AS n WHERE n.oid IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'relation', c.oid::regclass::text,
       concat_ws(' | ', 'kind ' || c.relkind::text, 'owner ' || c.relowner::regrole::text,
                 'acl ' || coalesce(c.relacl::text, 'default'), 'persistence ' || c.relpersistence::text,
                 'options ' || coalesce(c.reloptions::text, 'none'),
                 'row security ' || c.relrowsecurity::text || ' ' || c.relforcerowsecurity::text,
                 'replica identity ' || c.relreplident::text,
                 CASE WHEN c.reloftype <> 0 THEN 'of ' || c.reloftype::regtype::text END)
FROM pg_catalog.pg_class AS c
WHERE c.relnamespace IN (SELECT oid FROM schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c')

UNION ALL
SELECT 'column', c.oid::regclass::text || '.' || pg_catalog.quote_ident(a.attname),
       concat_ws(' | ',
                 'position ' || (row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum))::text,
                 pg_catalog.format_type(a.atttypid, a.atttypmod),
                 CASE WHEN a.attnotnull THEN 'not null' END,
                 'default ' || pg_catalog.pg_get_expr(d.adbin, d.adrelid),
                 CASE WHEN a.attidentity::text <> '' THEN 'identity ' || a.attidentity::text END,
                 CASE WHEN a.attgenerated::text <> '' THEN 'generated ' || a.attgenerated::text END,
                 CASE WHEN a.attcollation <> t.typcollation
                      THEN 'collation ' || a.attcollation::regcollation::text END,
                 'statistics ' || nullif(a.attstattarget, -1)::text,
                 'acl ' || a.attacl::text)
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = c.oid
JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE c.relnamespace IN (SELECT oid FROM schemas) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
  AND a.attnum > 0 AND NOT a.attisdropped

UNION ALL
SELECT 'constraint',
       CASE WHEN con.conrelid <> 0 THEN con.conrelid::regclass::text ELSE con.contypid::regtype::text END
           || ' ' || pg_catalog.quote_ident(con.conname),
       concat_ws(' | ', pg_catalog.pg_get_constraintdef(con.oid),
                 CASE WHEN con.condeferrable THEN 'deferrable' END,
                 CASE WHEN con.condeferred THEN 'initially deferred' END,
                 CASE WHEN NOT con.convalidated THEN 'not validated' END)
FROM pg_catalog.pg_constraint AS con WHERE con.connamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'index', i.indexrelid::regclass::text,
       concat_ws(' | ', pg_catalog.pg_get_indexdef(i.indexrelid),
                 CASE WHEN NOT i.indisvalid THEN 'invalid' END,
                 CASE WHEN i.indisclustered THEN 'clustered' END)
FROM pg_catalog.pg_index AS i JOIN pg_catalog.pg_class AS c ON c.oid = i.indexrelid
WHERE c.relnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'trigger', tg.tgrelid::regclass::text || ' ' || pg_catalog.quote_ident(tg.tgname),
       pg_catalog.pg_get_triggerdef(tg.oid) || ' | enabled ' || tg.tgenabled::text
FROM pg_catalog.pg_trigger AS tg JOIN pg_catalog.pg_class AS c ON c.oid = tg.tgrelid
WHERE NOT tg.tgisinternal AND c.relnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'function', p.oid::regprocedure::text,
       concat_ws(' | ', 'returns ' || pg_catalog.pg_get_function_result(p.oid), 'kind ' || p.prokind::text,
                 'owner ' || p.proowner::regrole::text, 'acl ' || coalesce(p.proacl::text, 'default'))
FROM pg_catalog.pg_proc AS p WHERE p.pronamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'function definition', p.oid::regprocedure::text,
       CASE WHEN p.prokind = 'a' THEN 'aggregate' ELSE pg_catalog.pg_get_functiondef(p.oid) END
FROM pg_catalog.pg_proc AS p WHERE p.pronamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'type', ty.oid::regtype::text,
       concat_ws(' | ', 'type ' || ty.typtype::text, 'owner ' || ty.typowner::regrole::text,
                 'acl ' || coalesce(ty.typacl::text, 'default'),
                 CASE WHEN ty.typtype = 'd'
                      THEN 'over ' || pg_catalog.format_type(ty.typbasetype, ty.typtypmod) END,
                 CASE WHEN ty.typnotnull THEN 'not null' END,
                 'default ' || ty.typdefault,
                 CASE WHEN ty.typtype = 'e' THEN 'labels ' || (
                     SELECT string_agg(e.enumlabel::text, ', ' ORDER BY e.enumsortorder)
                     FROM pg_catalog.pg_enum AS e WHERE e.enumtypid = ty.oid) END)
FROM pg_catalog.pg_type AS ty
LEFT JOIN pg_catalog.pg_class AS c ON c.oid = ty.typrelid
WHERE ty.typnamespace IN (SELECT oid FROM schemas)
  AND (ty.typtype IN ('d', 'e', 'r', 'm') OR (ty.typtype = 'c' AND c.relkind = 'c'))

UNION ALL
SELECT 'sequence', s.seqrelid::regclass::text,
       concat_ws(' | ', pg_catalog.format_type(s.seqtypid, NULL), 'start ' || s.seqstart,
                 'increment ' || s.seqincrement, 'min ' || s.seqmin, 'max ' || s.seqmax,
                 'cache ' || s.seqcache, 'cycle ' || s.seqcycle,
                 'owned by ' || (
                     SELECT d.refobjid::regclass::text || '.' || pg_catalog.quote_ident(a.attname)
                     FROM pg_catalog.pg_depend AS d
                     JOIN pg_catalog.pg_attribute AS a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                     WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = s.seqrelid
                       AND d.refclassid = 'pg_catalog.pg_class'::regclass AND d.deptype IN ('a', 'i')
                     LIMIT 1))
FROM pg_catalog.pg_sequence AS s JOIN pg_catalog.pg_class AS c ON c.oid = s.seqrelid
WHERE c.relnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'view', c.oid::regclass::text, pg_catalog.pg_get_viewdef(c.oid)
FROM pg_catalog.pg_class AS c
WHERE c.relnamespace IN (SELECT oid FROM schemas) AND c.relkind IN ('v', 'm')

UNION ALL
SELECT 'policy', pol.polrelid::regclass::text || ' ' || pg_catalog.quote_ident(pol.polname),
       concat_ws(' | ', pol.polcmd::text, pol.polpermissive::text, pol.polroles::regrole[]::text,
                 pg_catalog.pg_get_expr(pol.polqual, pol.polrelid),
                 pg_catalog.pg_get_expr(pol.polwithcheck, pol.polrelid))
FROM pg_catalog.pg_policy AS pol JOIN pg_catalog.pg_class AS c ON c.oid = pol.polrelid
WHERE c.relnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'rule', r.ev_class::regclass::text || ' ' || pg_catalog.quote_ident(r.rulename),
       pg_catalog.pg_get_ruledef(r.oid)
FROM pg_catalog.pg_rewrite AS r JOIN pg_catalog.pg_class AS c ON c.oid = r.ev_class
WHERE r.rulename <> '_RETURN' AND c.relnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'extension', pg_catalog.quote_ident(e.extname),
       e.extversion || ' in ' || e.extnamespace::regnamespace::text
FROM pg_catalog.pg_extension AS e

UNION ALL
SELECT 'default privileges',
       d.defaclrole::regrole::text || ' in '
           || CASE WHEN d.defaclnamespace = 0 THEN 'every schema'
                   ELSE d.defaclnamespace::regnamespace::text END
           || ' on ' || d.defaclobjtype::text,
       d.defaclacl::text
FROM pg_catalog.pg_default_acl AS d

UNION ALL
SELECT 'event trigger', pg_catalog.quote_ident(ev.evtname),
       concat_ws(' | ', ev.evtevent, ev.evtfoid::regprocedure::text, ev.evtenabled::text, ev.evttags::text)
FROM pg_catalog.pg_event_trigger AS ev

UNION ALL
SELECT 'operator', o.oid::regoperator::text, o.oprcode::regprocedure::text
FROM pg_catalog.pg_operator AS o WHERE o.oprnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'cast', pg_catalog.pg_describe_object('pg_catalog.pg_cast'::regclass, ca.oid, 0),
       concat_ws(' | ', ca.castcontext::text, ca.castmethod::text)
FROM pg_catalog.pg_cast AS ca WHERE ca.oid >= 16384

UNION ALL
SELECT 'collation', co.oid::regcollation::text, concat_ws(' | ', co.collprovider::text, co.collcollate)
FROM pg_catalog.pg_collation AS co WHERE co.collnamespace IN (SELECT oid FROM schemas)

UNION ALL
SELECT 'comment', pg_catalog.pg_describe_object(ds.classoid, ds.objoid, ds.objsubid), ds.description
FROM pg_catalog.pg_description AS ds WHERE ds.objoid >= 16384
"""

# yoyo's record and the components table are data, but data the schema is made of.
RECORDS_QUERY = """
SELECT 'applied migration', migration_id::text, '' FROM public._yoyo_migration
UNION ALL
SELECT 'component', name, version FROM wallet.components
"""


def catalog(url: str) -> set[Row]:
    """The catalog of the database at url (read as a superuser, in a session of its own)."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SET search_path = ''")
        rows = connection.execute(CATALOG_QUERY).fetchall()
        rows += connection.execute(RECORDS_QUERY).fetchall()
    found = {(kind, name, detail) for kind, name, detail in rows}
    assert len(found) == len(rows), "two catalog rows alike: the dump lost a distinction"
    return found


def describe(rows: set[Row], limit: int = 40) -> str:
    """rows, one a line, sorted (the first `limit` of them), for an assertion message."""
    lines = [f"  {kind} {name}: {detail}" for kind, name, detail in sorted(rows)]
    more = [f"  ... and {len(lines) - limit} more"] if len(lines) > limit else []
    return "\n".join(lines[:limit] + more)


def kinds(rows: set[Row]) -> set[str]:
    return {kind for kind, _, _ in rows}
