-- Promoter's durable state (PostgreSQL). Twin of migrations/sqlite/0001_initial.sql:
-- same tables, same columns, same meaning. Times are unix milliseconds (BIGINT);
-- JSON values are stored as TEXT.

-- Installation-wide values: the callback secret, the installation id, keeper status.
CREATE TABLE meta (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Every change QRS delivered (and every app the catch-up sweep found), before evaluation.
CREATE TABLE inbox (
    id                 BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- object id, change type, changed properties and modifiedDate: identical deliveries collapse.
    dedupe_key         TEXT NOT NULL UNIQUE,
    -- update | reload | publish (the callback endpoint) | sweep (synthetic)
    source             TEXT NOT NULL,
    object_type        TEXT NOT NULL,
    object_id          TEXT NOT NULL,
    change_type        BIGINT NOT NULL,
    changed_properties TEXT NOT NULL,
    modified_date      TEXT,
    payload            TEXT NOT NULL,
    received_at        BIGINT NOT NULL,
    last_seen_at       BIGINT NOT NULL,
    duplicates         BIGINT NOT NULL DEFAULT 0,
    -- pending | processing | done | ignored | failed
    state              TEXT NOT NULL DEFAULT 'pending',
    lease_until        BIGINT,
    claims             BIGINT NOT NULL DEFAULT 0,
    note               TEXT NOT NULL DEFAULT '',
    updated_at         BIGINT NOT NULL
);
CREATE INDEX inbox_state_id ON inbox (state, id);
CREATE INDEX inbox_object ON inbox (object_id, id);

-- Change subscriptions registered on the local site (QRS forgets them when it restarts).
CREATE TABLE subscriptions (
    handle        TEXT PRIMARY KEY NOT NULL,
    site          TEXT NOT NULL,
    -- update | reload | publish
    kind          TEXT NOT NULL,
    object_type   TEXT NOT NULL,
    change_type   TEXT NOT NULL,
    property_name TEXT,
    callback_url  TEXT NOT NULL,
    -- the installation that registered it
    instance      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    checked_at    BIGINT NOT NULL
);

-- Promotion (and deny, restore...) jobs: one per app, trigger and modifiedDate.
CREATE TABLE jobs (
    id          TEXT PRIMARY KEY NOT NULL,
    job_key     TEXT NOT NULL UNIQUE,
    app_id      TEXT NOT NULL,
    app_name    TEXT NOT NULL,
    job_trigger TEXT NOT NULL,
    kind        TEXT NOT NULL,
    plan        TEXT NOT NULL,
    state       TEXT NOT NULL DEFAULT '{}',
    -- pending | running | retry | succeeded | failed | partially_failed | skipped
    status      TEXT NOT NULL,
    claims      BIGINT NOT NULL DEFAULT 0,
    next_run_at BIGINT NOT NULL,
    lease_owner TEXT,
    lease_until BIGINT,
    last_error  TEXT,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX jobs_status_next ON jobs (status, next_run_at);
CREATE INDEX jobs_app ON jobs (app_id, created_at);

CREATE TABLE job_steps (
    job_id      TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step_key    TEXT NOT NULL,
    detail      TEXT NOT NULL,
    -- running | ok | failed | skipped
    outcome     TEXT NOT NULL,
    result      TEXT NOT NULL DEFAULT 'null',
    started_at  BIGINT NOT NULL,
    finished_at BIGINT,
    PRIMARY KEY (job_id, step_key)
);

CREATE TABLE job_attempts (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id    TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    step_key  TEXT NOT NULL,
    attempt   BIGINT NOT NULL,
    error     TEXT NOT NULL,
    retryable BIGINT NOT NULL,
    at        BIGINT NOT NULL,
    UNIQUE (job_id, step_key, attempt)
);

-- Once-per-job side effects (mail sent, version stored...).
CREATE TABLE job_effects (
    job_id     TEXT NOT NULL,
    effect_key TEXT NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, effect_key)
);

-- Where each source app went, per target site and stream.
CREATE TABLE app_mappings (
    source_app_id TEXT NOT NULL,
    site          TEXT NOT NULL,
    stream_id     TEXT NOT NULL,
    target_app_id TEXT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (source_app_id, site, stream_id)
);

-- (app id, modifiedDate) pairs the engine produced itself: their notifications are ignored.
CREATE TABLE own_writes (
    app_id        TEXT NOT NULL,
    modified_date TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (app_id, modified_date)
);
CREATE INDEX own_writes_created ON own_writes (created_at);

CREATE TABLE audit_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_time    BIGINT NOT NULL,
    job_id        TEXT,
    app_id        TEXT NOT NULL,
    app_name      TEXT NOT NULL,
    event         TEXT NOT NULL,
    site          TEXT NOT NULL,
    stream        TEXT NOT NULL,
    target_app_id TEXT NOT NULL,
    actor         TEXT NOT NULL,
    outcome       TEXT NOT NULL,
    detail        TEXT NOT NULL
);
CREATE INDEX audit_events_app ON audit_events (app_id, id);
