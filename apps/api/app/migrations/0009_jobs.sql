-- Scheduled jobs (apps/api/app/jobs): one row per job and slot, claimed by exactly one
-- scheduler whatever the number of hosts. A slot is the start of one period of the job's
-- schedule; the row's primary key is the claim. A row is `running` until claimed_until (the
-- lease, the job's timeout), then another scheduler may take it over; a `failed` row is
-- retried from retry_at. Rows older than JOBS_HISTORY_DAYS are deleted.
CREATE TABLE job_runs (
    job text NOT NULL,
    slot_at timestamptz NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    -- Each claim of the slot counts one: a retry or a takeover. It fences a late finisher:
    -- a run records its end only while the row still carries its own attempt number.
    attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    claimed_by text NOT NULL,
    claimed_until timestamptz NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    retry_at timestamptz,
    summary jsonb,
    -- The last failure of this slot, kept when a retry succeeds.
    error text,
    failed_at timestamptz,
    PRIMARY KEY (job, slot_at)
);

-- The runs in progress (a few at any time), which /api/health/jobs names, without a scan of
-- a job's whole history.
CREATE INDEX job_runs_running_idx ON job_runs (job, slot_at) WHERE status = 'running';

-- One row per job that ever ran: what the health endpoint and the metrics read in one
-- small scan, and the run counters by outcome, which outlive the pruned job_runs rows.
CREATE TABLE jobs (
    name text PRIMARY KEY,
    first_slot_at timestamptz NOT NULL,
    last_success_slot_at timestamptz,
    last_success_at timestamptz,
    last_summary jsonb,
    last_failure_at timestamptz,
    last_error text,
    -- outcome (succeeded, failed, expired, abandoned) -> runs so far
    runs jsonb NOT NULL DEFAULT '{}'
);

-- Why a rental was cancelled: `not_picked_up` when expire_reservations cancelled it;
-- NULL for a cancellation by staff and for any other status.
ALTER TABLE rentals ADD COLUMN cancel_reason text
    CONSTRAINT rentals_cancel_reason_check CHECK (cancel_reason IS NULL OR status = 'cancelled');

-- One row per overdue rental and day it was reminded of: the overdue_reminders job's
-- guarantee of one reminder per rental per day however often it runs.
CREATE TABLE overdue_reminders (
    rental_id bigint NOT NULL REFERENCES rentals (id) ON DELETE CASCADE,
    day date NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (rental_id, day)
);
