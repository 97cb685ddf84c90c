CREATE TABLE machine_keys (
    id             TEXT     PRIMARY KEY,
    user_id        TEXT     NOT NULL,
    resource_owner TEXT     NOT NULL,
    key_type       SMALLINT NOT NULL,
    public_key     BYTEA    NOT NULL,
    expiration_ms  BIGINT   NOT NULL,
    sequence       BIGINT   NOT NULL UNIQUE,
    created_ms     BIGINT   NOT NULL,
    changed_ms     BIGINT   NOT NULL
);

CREATE INDEX machine_keys_by_user ON machine_keys (user_id, resource_owner, sequence);

-- Shared by every process on the database: unique, increasing values.
CREATE SEQUENCE key_event_sequence;
CREATE SEQUENCE key_ids START WITH 100000000000000000;
