-- Move claims (package move, "Exclusive moves"): a move of a repl claims it
-- in every cluster that knows it before it changes anything, so that of two
-- moves of one repl to different clusters only one proceeds. A claim lasts
-- until expires_at (the database's clock); a rerun of the same move (the
-- same destination) takes it over.
CREATE TABLE move_claims (
    repl_id     text        PRIMARY KEY CHECK (repl_id ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    holder      text        NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    destination text        NOT NULL CHECK (destination ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
    since       timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

---- create above / drop below ----

DROP TABLE move_claims;
