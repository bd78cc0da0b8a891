-- Fixed-window counters of the rate limits (apps/api/app/ratelimit.py), shared by every
-- worker and host: one row per limited key (e.g. failed logins of one account, or from
-- one address), counting hits until expires_at, when the next hit starts a new window.
-- UNLOGGED: no WAL for a counter bumped on every failed login; after a crash the table
-- comes back empty, which only forgives the failures counted so far.
CREATE UNLOGGED TABLE rate_limits (
    key text PRIMARY KEY,
    hits integer NOT NULL CHECK (hits >= 0),
    expires_at timestamptz NOT NULL
);

-- The occasional cleanup deletes expired windows.
CREATE INDEX rate_limits_expires_at_idx ON rate_limits (expires_at);
