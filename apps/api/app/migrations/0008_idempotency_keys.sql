-- Replies to POST requests sent with an Idempotency-Key (apps/api/app/idempotency.py),
-- so that a client that retries after losing the reply gets the same answer instead of a
-- second write. One row per user and key, written in the same transaction as the write it
-- answers; a retry with the same request replays status and body, another request with
-- the key gets 422. Rows past expires_at (IDEMPOTENCY_TTL_SECONDS) count as absent and are
-- deleted from time to time.
CREATE TABLE idempotency_keys (
    user_id bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    -- sha-256 of the method, path and body: the same key must come with the same request.
    fingerprint bytea NOT NULL,
    status smallint NOT NULL,
    body bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);

CREATE INDEX idempotency_keys_expires_at_idx ON idempotency_keys (expires_at);
