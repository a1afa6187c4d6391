-- The change log (README, "The change feed"): every change to repls,
-- tombstones, domains, challenges, certificates and wakes appends the keys
-- it touched to changes, in the writer's transaction, so that a consumer
-- reads the log in batches from where it was (a reconnect resumes, and a
-- hot standby can be followed: LISTEN/NOTIFY does not reach it).
--
-- The order a consumer reads in is (xid, pos): xid is the writer's
-- transaction id and pos numbers the rows. pos alone would have gaps that
-- fill late (a sequence value is taken at insert, not at commit), so a
-- reader only takes rows whose xid is below the xmin of its snapshot: every
-- transaction below it has ended and its rows are all visible, and any row
-- that appears later has an xid at or above that xmin, after the reader's
-- position.
CREATE TABLE changes (
    xid     bigint      NOT NULL DEFAULT pg_current_xact_id()::text::bigint,
    pos     bigint      GENERATED ALWAYS AS IDENTITY,
    at      timestamptz NOT NULL DEFAULT now(),
    -- r: a repl's live row or tombstone (repl_id, owner, slug); d: a domain
    -- (name); c: a challenge (name); k: a certificate (name); w: a wake
    -- (repl_id).
    kind    text        NOT NULL CHECK (kind IN ('r', 'd', 'c', 'k', 'w')),
    repl_id text,
    owner   text,
    slug    text,
    name    text,
    PRIMARY KEY (xid, pos)
);
-- Pruning goes by age; rows are appended in time order, so a BRIN index is
-- enough and costs the writers next to nothing.
CREATE INDEX changes_at_idx ON changes USING brin (at);

-- The highest (xid, pos) pruning removed: a consumer whose position is
-- below it may have missed changes and rebuilds from a full read.
CREATE TABLE changes_pruned (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    xid bigint  NOT NULL,
    pos bigint  NOT NULL
);
INSERT INTO changes_pruned (xid, pos) VALUES (0, 0);

-- The keys are those of notify_change() in 001: an update that renames
-- logs the old key and the new one. The NOTIFY on replproxy_feed is only a
-- wake-up: its payload is empty, so PostgreSQL sends one per transaction.
CREATE FUNCTION log_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'repls' THEN
        IF TG_OP <> 'INSERT' THEN INSERT INTO changes (kind, repl_id, owner, slug) VALUES ('r', OLD.id, OLD.owner, OLD.slug); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR (NEW.id, NEW.owner, NEW.slug) IS DISTINCT FROM (OLD.id, OLD.owner, OLD.slug)) THEN
            INSERT INTO changes (kind, repl_id, owner, slug) VALUES ('r', NEW.id, NEW.owner, NEW.slug);
        END IF;
    ELSIF TG_TABLE_NAME = 'tombstones' THEN
        IF TG_OP <> 'INSERT' THEN INSERT INTO changes (kind, repl_id, owner, slug) VALUES ('r', OLD.repl_id, OLD.owner, OLD.slug); END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR (NEW.repl_id, NEW.owner, NEW.slug) IS DISTINCT FROM (OLD.repl_id, OLD.owner, OLD.slug)) THEN
            INSERT INTO changes (kind, repl_id, owner, slug) VALUES ('r', NEW.repl_id, NEW.owner, NEW.slug);
        END IF;
    ELSIF TG_TABLE_NAME = 'domains' OR TG_TABLE_NAME = 'challenges' OR TG_TABLE_NAME = 'certificates' THEN
        IF TG_OP <> 'INSERT' THEN
            INSERT INTO changes (kind, name) VALUES (CASE TG_TABLE_NAME WHEN 'domains' THEN 'd' WHEN 'challenges' THEN 'c' ELSE 'k' END, OLD.name);
        END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.name <> OLD.name) THEN
            INSERT INTO changes (kind, name) VALUES (CASE TG_TABLE_NAME WHEN 'domains' THEN 'd' WHEN 'challenges' THEN 'c' ELSE 'k' END, NEW.name);
        END IF;
    ELSIF TG_TABLE_NAME = 'wakes' THEN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO changes (kind, repl_id) VALUES ('w', OLD.repl_id);
        ELSE
            INSERT INTO changes (kind, repl_id) VALUES ('w', NEW.repl_id);
        END IF;
    END IF;
    PERFORM pg_notify('replproxy_feed', '');
    RETURN NULL;
END $$;

CREATE TRIGGER repls_log AFTER INSERT OR UPDATE OR DELETE ON repls
    FOR EACH ROW EXECUTE FUNCTION log_change();
CREATE TRIGGER tombstones_log AFTER INSERT OR UPDATE OR DELETE ON tombstones
    FOR EACH ROW EXECUTE FUNCTION log_change();
CREATE TRIGGER domains_log AFTER INSERT OR UPDATE OR DELETE ON domains
    FOR EACH ROW EXECUTE FUNCTION log_change();
CREATE TRIGGER challenges_log AFTER INSERT OR UPDATE OR DELETE ON challenges
    FOR EACH ROW EXECUTE FUNCTION log_change();
CREATE TRIGGER certificates_log AFTER INSERT OR UPDATE OR DELETE ON certificates
    FOR EACH ROW EXECUTE FUNCTION log_change();
CREATE TRIGGER wakes_log AFTER INSERT OR UPDATE OR DELETE ON wakes
    FOR EACH ROW EXECUTE FUNCTION log_change();

-- The NOTIFY triggers of 001 and 004 stay for one release: binaries built
-- before this migration still follow the "replproxy" channel during a
-- rolling upgrade. A later migration drops them.

---- create above / drop below ----

DROP TRIGGER wakes_log ON wakes;
DROP TRIGGER certificates_log ON certificates;
DROP TRIGGER challenges_log ON challenges;
DROP TRIGGER domains_log ON domains;
DROP TRIGGER tombstones_log ON tombstones;
DROP TRIGGER repls_log ON repls;
DROP FUNCTION log_change();
DROP TABLE changes_pruned, changes;
