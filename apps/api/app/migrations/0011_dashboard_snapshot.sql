-- The dashboard's figures, computed by one process at a time (the refresh_dashboard job, or
-- the first request when there is none yet) and read by every request in one primary-key
-- lookup: the cost of the dashboard's statement no longer grows with workers and hosts.
-- One row (id 1), replaced by each computation.
CREATE TABLE dashboard_snapshot (
    id smallint PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    figures jsonb NOT NULL,
    -- When the statement that computed the figures started.
    generated_at timestamptz NOT NULL,
    -- How long the computation took, and how many there have been (for people and tests).
    compute_ms integer NOT NULL,
    refreshes bigint NOT NULL DEFAULT 1
);
