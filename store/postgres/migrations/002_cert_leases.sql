-- Certificates on demand (DESIGN.md, "The proxy", item 6). The
-- certificates table of 001 holds the ACME account key, certificates with
-- their private keys and autocert's short-lived challenge answers, by name.
-- not_after is the expiry of the certificate in data, when data holds one,
-- so that listing certificates needs no parsing in the database.
ALTER TABLE certificates ADD COLUMN not_after timestamptz;
ALTER TABLE certificates ADD CONSTRAINT certificates_name_check
    CHECK (name ~ '^[A-Za-z0-9_*+-][A-Za-z0-9._*+-]{0,254}$');

-- A lease per certificate name: the proxy that holds an unexpired lease is
-- the only one of the cluster that may order that certificate.
CREATE TABLE cert_leases (
    name        text        PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_*+-][A-Za-z0-9._*+-]{0,254}$'),
    holder      text        NOT NULL CHECK (length(holder) BETWEEN 1 AND 200),
    expires_at  timestamptz NOT NULL
);

---- create above / drop below ----

DROP TABLE cert_leases;
ALTER TABLE certificates DROP CONSTRAINT certificates_name_check;
ALTER TABLE certificates DROP COLUMN not_after;
