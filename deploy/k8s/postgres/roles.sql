-- The PostgreSQL roles of salesplan. Run once per database by its owner (or a superuser)
-- before the services' `migrate`: CloudNativePG runs it at bootstrap
-- (deploy/k8s/postgres/cluster.yaml), compose at the first start of its database. Safe to
-- run again, and on a database the services created before they had roles of their own.
--
-- Each service owns its schema and has no right on the others': a service that is
-- compromised (or wrong) cannot read or change another service's data. `reporting verify`
-- reads deal-service's schema through a role that can only read. Passwords are set outside
-- this file (CloudNativePG managed roles, or ALTER ROLE … PASSWORD).

-- Run by a superuser (CloudNativePG and compose do): it creates roles and hands schemas
-- over. All or nothing.
BEGIN;

-- deal-service's substring search; created here, where creating an extension is allowed.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;

DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['salesplan_deal_service', 'salesplan_distributor',
                                'salesplan_reporting', 'salesplan_reporting_verify'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN', role);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- there already (or created by a concurrent run)
        END;
        -- One database: connecting to it is all a role may do at its level.
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), role);
    END LOOP;
    -- And only these roles (and the owner) connect to it.
    EXECUTE format('REVOKE CONNECT, TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
END
$$;

-- Nobody creates objects in `public` (older PostgreSQL let everyone).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

-- Each service's schema, owned by its role (its migrations create and alter its tables).
-- A schema created earlier by another role is handed over with everything in it.
DO $$
DECLARE
    owned record;
    object record;
BEGIN
    FOR owned IN SELECT * FROM (VALUES ('deal_service', 'salesplan_deal_service'),
                                       ('distributor', 'salesplan_distributor'),
                                       ('reporting', 'salesplan_reporting')) AS t(schema, role) LOOP
        EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I AUTHORIZATION %I', owned.schema, owned.role);
        EXECUTE format('ALTER SCHEMA %I OWNER TO %I', owned.schema, owned.role);
        -- Tables, views and sequences (a table's indexes and owned sequences follow it).
        FOR object IN
            SELECT c.relname, c.relkind FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = owned.schema AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
              AND NOT EXISTS (SELECT 1 FROM pg_depend d
                              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                                AND d.deptype IN ('a', 'i'))
        LOOP
            EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                           CASE object.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                           owned.schema, object.relname, owned.role);
        END LOOP;
        FOR object IN
            SELECT p.oid::regprocedure AS signature, p.prokind FROM pg_proc p
            JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = owned.schema
        LOOP
            EXECUTE format('ALTER %s %s OWNER TO %I',
                           CASE object.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                           object.signature, owned.role);
        END LOOP;
        FOR object IN
            SELECT c.collname FROM pg_collation c
            JOIN pg_namespace n ON n.oid = c.collnamespace WHERE n.nspname = owned.schema
        LOOP
            EXECUTE format('ALTER COLLATION %I.%I OWNER TO %I', owned.schema, object.collname, owned.role);
        END LOOP;
        FOR object IN
            SELECT t.typname, t.typtype FROM pg_type t
            JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = owned.schema AND t.typtype IN ('e', 'd', 'c', 'r')
              AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
        LOOP
            EXECUTE format('ALTER %s %I.%I OWNER TO %I',
                           CASE object.typtype WHEN 'd' THEN 'DOMAIN' ELSE 'TYPE' END,
                           owned.schema, object.typname, owned.role);
        END LOOP;
        EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', owned.schema);
    END LOOP;
END
$$;

-- `reporting verify`: reads deal-service's tables, now and as its migrations add them, and
-- every transaction it starts is read-only.
GRANT USAGE ON SCHEMA deal_service TO salesplan_reporting_verify;
GRANT SELECT ON ALL TABLES IN SCHEMA deal_service TO salesplan_reporting_verify;
ALTER DEFAULT PRIVILEGES FOR ROLE salesplan_deal_service IN SCHEMA deal_service
    GRANT SELECT ON TABLES TO salesplan_reporting_verify;
ALTER ROLE salesplan_reporting_verify SET default_transaction_read_only = on;

COMMIT;
