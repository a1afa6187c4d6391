-- Wake on request (README, "Wake on request"). A repl may be asleep: no
-- running container, no endpoints needed; its row stays and its names
-- still route here. A proxy that gets a request for it inserts a row in
-- wakes; the cluster's container manager claims the row, starts the
-- container and answers by setting the repl's endpoints and asleep = false
-- and deleting the row in one transaction, or by setting failed.
ALTER TABLE repls ADD COLUMN asleep boolean NOT NULL DEFAULT false;
ALTER TABLE repls DROP CONSTRAINT repls_endpoints_check;
ALTER TABLE repls ADD CONSTRAINT repls_endpoints_check CHECK (asleep OR cardinality(endpoints) > 0);

-- At most one wake per repl: pending (failed IS NULL), claimed by a
-- manager (claimed_by IS NOT NULL) or failed with the manager's reason.
CREATE TABLE wakes (
    repl_id      dns_label   PRIMARY KEY REFERENCES repls (id) ON DELETE CASCADE,
    requested_at timestamptz NOT NULL,
    requested_by text        NOT NULL CHECK (length(requested_by) BETWEEN 1 AND 1000),
    claimed_by   text        CHECK (length(claimed_by) BETWEEN 1 AND 1000),
    claimed_at   timestamptz,
    failed       text        CHECK (length(failed) BETWEEN 1 AND 1000),
    failed_at    timestamptz,
    CHECK ((claimed_by IS NULL) = (claimed_at IS NULL)),
    CHECK ((failed IS NULL) = (failed_at IS NULL))
);
CREATE INDEX wakes_requested_at_idx ON wakes (requested_at) WHERE failed IS NULL;

-- When each repl last served a request, written by the proxies in one
-- statement per flush. No foreign key: a flush that names a repl deleted
-- meanwhile must not fail; repls_drop_activity removes a repl's row.
CREATE TABLE repl_activity (
    repl_id dns_label   PRIMARY KEY,
    last_at timestamptz NOT NULL
);

CREATE FUNCTION repls_drop_activity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM repl_activity WHERE repl_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER repls_drop_activity AFTER DELETE ON repls
    FOR EACH ROW EXECUTE FUNCTION repls_drop_activity();

-- "w <repl id>" on the change channel for every change to a wake.
CREATE FUNCTION notify_wake() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('replproxy', 'w ' || OLD.repl_id);
    ELSE
        PERFORM pg_notify('replproxy', 'w ' || NEW.repl_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER wakes_notify AFTER INSERT OR UPDATE OR DELETE ON wakes
    FOR EACH ROW EXECUTE FUNCTION notify_wake();

---- create above / drop below ----

-- Fails while a repl is asleep without endpoints: wake or delete it first.
DROP TABLE repl_activity, wakes;
DROP TRIGGER repls_drop_activity ON repls;
DROP FUNCTION notify_wake(), repls_drop_activity();
ALTER TABLE repls DROP CONSTRAINT repls_endpoints_check;
ALTER TABLE repls ADD CONSTRAINT repls_endpoints_check CHECK (cardinality(endpoints) > 0);
ALTER TABLE repls DROP COLUMN asleep;
