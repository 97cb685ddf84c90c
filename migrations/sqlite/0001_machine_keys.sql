CREATE TABLE machine_keys (
    id             TEXT    PRIMARY KEY NOT NULL,
    user_id        TEXT    NOT NULL,
    resource_owner TEXT    NOT NULL,
    key_type       INTEGER NOT NULL,
    public_key     BLOB    NOT NULL,
    expiration_ms  INTEGER NOT NULL,
    sequence       INTEGER NOT NULL UNIQUE,
    created_ms     INTEGER NOT NULL,
    changed_ms     INTEGER NOT NULL
);

CREATE INDEX machine_keys_by_user ON machine_keys (user_id, resource_owner, sequence);

-- The one counter behind `sequence`: only ever grows.
CREATE TABLE key_sequence (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO key_sequence (id, value) VALUES (1, 0);
