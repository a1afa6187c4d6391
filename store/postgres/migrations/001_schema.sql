-- The data of one cluster (DESIGN.md, "Data"). Names are stored lower-case
-- and checked here too, so that no writer can put junk where the request
-- path reads.

CREATE DOMAIN dns_label AS text
    CHECK (VALUE ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$');

CREATE DOMAIN dns_name AS text
    CHECK (length(VALUE) <= 253
       AND VALUE ~ '^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$');

CREATE TABLE repls (
    id          dns_label   PRIMARY KEY,
    owner       dns_label   NOT NULL CHECK (owner <> 'id'),
    slug        dns_label   NOT NULL,
    endpoints   text[]      NOT NULL CHECK (cardinality(endpoints) > 0),
    generation  bigint      NOT NULL DEFAULT 1 CHECK (generation > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT repls_owner_slug_key UNIQUE (owner, slug)
);

CREATE TABLE tombstones (
    repl_id     dns_label   PRIMARY KEY,
    owner       dns_label   NOT NULL,
    slug        dns_label   NOT NULL,
    cluster     dns_label   NOT NULL,
    generation  bigint      NOT NULL CHECK (generation > 0),
    moved_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tombstones_owner_slug_idx ON tombstones (owner, slug);
CREATE INDEX tombstones_moved_at_idx ON tombstones (moved_at);

CREATE TABLE domains (
    name        dns_name    PRIMARY KEY,
    repl_id     dns_label   NOT NULL,
    token       text        NOT NULL CHECK (token ~ '^[A-Za-z0-9_-]{1,128}$'),
    verified_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX domains_repl_id_idx ON domains (repl_id);

-- A domain names a repl that is live here or has a tombstone here. A plain
-- foreign key cannot say "in one of two tables", so a deferred constraint
-- trigger checks it at commit; deleting the last row of a repl removes its
-- domains.
CREATE FUNCTION domains_check_repl() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM repls WHERE id = NEW.repl_id)
       AND NOT EXISTS (SELECT 1 FROM tombstones WHERE repl_id = NEW.repl_id) THEN
        RAISE EXCEPTION 'domain % names repl %, which is neither live nor tombstoned here', NEW.name, NEW.repl_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER domains_repl_exists
    AFTER INSERT OR UPDATE OF repl_id ON domains
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION domains_check_repl();

CREATE FUNCTION domains_drop_orphans() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    rid text;
BEGIN
    IF TG_TABLE_NAME = 'repls' THEN rid := OLD.id; ELSE rid := OLD.repl_id; END IF;
    IF NOT EXISTS (SELECT 1 FROM repls WHERE repls.id = rid)
       AND NOT EXISTS (SELECT 1 FROM tombstones WHERE tombstones.repl_id = rid) THEN
        DELETE FROM domains WHERE domains.repl_id = rid;
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER repls_drop_domains
    AFTER DELETE ON repls DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION domains_drop_orphans();
CREATE CONSTRAINT TRIGGER tombstones_drop_domains
    AFTER DELETE ON tombstones DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION domains_drop_orphans();

CREATE TABLE challenges (
    name        text        NOT NULL CHECK (length(name) <= 253
                    AND name ~ '^_acme-challenge\.([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    value       text        NOT NULL CHECK (value ~ '^[!#-&(-~]{1,255}$'),
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (name, value)
);

-- The TLS certificate cache shared by every proxy of the cluster.
CREATE TABLE certificates (
    name        text        PRIMARY KEY,
    data        bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Change notifications carry only keys (NOTIFY payloads are limited to
-- 8000 bytes): "r <id> <owner> <slug>", "d <name>", "c <name>". An update
-- that renames announces the old key and the new one.
CREATE FUNCTION notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'repls' THEN
        IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('replproxy', 'r ' || OLD.id || ' ' || OLD.owner || ' ' || OLD.slug); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR (NEW.id, NEW.owner, NEW.slug) IS DISTINCT FROM (OLD.id, OLD.owner, OLD.slug)) THEN
            PERFORM pg_notify('replproxy', 'r ' || NEW.id || ' ' || NEW.owner || ' ' || NEW.slug);
        END IF;
    ELSIF TG_TABLE_NAME = 'tombstones' THEN
        IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('replproxy', 'r ' || OLD.repl_id || ' ' || OLD.owner || ' ' || OLD.slug); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR (NEW.repl_id, NEW.owner, NEW.slug) IS DISTINCT FROM (OLD.repl_id, OLD.owner, OLD.slug)) THEN
            PERFORM pg_notify('replproxy', 'r ' || NEW.repl_id || ' ' || NEW.owner || ' ' || NEW.slug);
        END IF;
    ELSIF TG_TABLE_NAME = 'domains' THEN
        IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('replproxy', 'd ' || OLD.name); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.name <> OLD.name) THEN PERFORM pg_notify('replproxy', 'd ' || NEW.name); END IF;
    ELSIF TG_TABLE_NAME = 'challenges' THEN
        IF TG_OP <> 'INSERT' THEN PERFORM pg_notify('replproxy', 'c ' || OLD.name); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.name <> OLD.name) THEN PERFORM pg_notify('replproxy', 'c ' || NEW.name); END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER repls_notify AFTER INSERT OR UPDATE OR DELETE ON repls
    FOR EACH ROW EXECUTE FUNCTION notify_change();
CREATE TRIGGER tombstones_notify AFTER INSERT OR UPDATE OR DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION notify_change();
CREATE TRIGGER domains_notify AFTER INSERT OR UPDATE OR DELETE ON domains
    FOR EACH ROW EXECUTE FUNCTION notify_change();
CREATE TRIGGER challenges_notify AFTER INSERT OR UPDATE OR DELETE ON challenges
    FOR EACH ROW EXECUTE FUNCTION notify_change();

---- create above / drop below ----

DROP TABLE certificates, challenges, domains, tombstones, repls;
DROP FUNCTION notify_change(), domains_drop_orphans(), domains_check_repl();
DROP DOMAIN dns_name, dns_label;
