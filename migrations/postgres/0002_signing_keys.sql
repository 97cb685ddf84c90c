-- The token endpoint's own signing keys (the private half sealed under the
-- master key). `generation` is unique: replicas rotating at once store one
-- key, not two.
CREATE TABLE signing_keys (
    id                 TEXT    PRIMARY KEY,
    generation         BIGINT  NOT NULL UNIQUE,
    public_key         BYTEA   NOT NULL,
    sealed_private_key BYTEA   NOT NULL,
    created_ms         BIGINT  NOT NULL,
    signs_from_ms      BIGINT  NOT NULL
);
