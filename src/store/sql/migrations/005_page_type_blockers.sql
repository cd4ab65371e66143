-- Version 5 gives the package's columns $2 of keys table $1 back their INTEGER type (see
-- key-schema.ts). What PostgreSQL will not let a type change pass: views and rules, and
-- triggers (agentkey's own, `ours`, are made again right after, so they are dropped;
-- anyone else's are named).
SELECT DISTINCT r.ev_class::regclass::text AS name, false AS ours, 'view' AS kind
FROM pg_attribute a
JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_rewrite'::regclass
JOIN pg_rewrite r ON r.oid = d.objid
WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[]) AND r.ev_class <> a.attrelid
UNION
SELECT DISTINCT g.tgname::text, g.tgname LIKE 'agentkey\_%', 'trigger'
FROM pg_attribute a
JOIN pg_depend d ON d.refobjid = a.attrelid AND d.refobjsubid = a.attnum AND d.classid = 'pg_trigger'::regclass
JOIN pg_trigger g ON g.oid = d.objid
WHERE a.attrelid = $1::regclass AND a.attname = ANY($2::text[])
ORDER BY 1;
