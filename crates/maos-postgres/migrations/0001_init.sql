-- maos schema version 1. Applied by maos itself (crates/maos-postgres/src/schema.rs) inside
-- one transaction; docs/protocol.md, section 10, says what every table means and the exact
-- rules a client follows.

-- One row per workspace namespace (a repository's clones on every machine share one).
CREATE TABLE maos.namespaces (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The row lock that serialises every state change of one mechanism in one namespace
-- (`locks`, `tasks`, `queue`, `agents`), and that mechanism's counter (locks: the last
-- ticket; tasks: the last log sequence number; queue: the last entry id).
CREATE TABLE maos.guards (
    ns       bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    what     text NOT NULL,
    counter  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (ns, what)
);

-- Liveness: every process that holds locks, waits for them or anchors an agent keeps one
-- session that holds the session-level advisory lock `key`; the process is alive while the
-- lock is held, that is while its database session lasts.
CREATE SEQUENCE maos.session_keys MINVALUE 1 MAXVALUE 4294967295 CYCLE;
CREATE TABLE maos.sessions (
    key          bigint PRIMARY KEY,
    ns           bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    host         text NOT NULL,
    pid          bigint NOT NULL,
    backend_pid  integer NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- The keys whose advisory lock is held right now in this database.
CREATE VIEW maos.live_sessions AS
    SELECT (l.classid::bigint << 32) | l.objid::bigint AS key
    FROM pg_catalog.pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());

CREATE FUNCTION maos.session_alive(k bigint) RETURNS boolean
    LANGUAGE sql STABLE AS $$ SELECT EXISTS (SELECT 1 FROM maos.live_sessions WHERE key = k) $$;

-- The server's clock in ms since the Unix epoch: the only clock leases are measured on.
CREATE FUNCTION maos.now_ms() RETURNS bigint
    LANGUAGE sql VOLATILE AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Fencing tokens: one sequence, so tokens only ever grow. Lock transactions commit without
-- waiting for the disk (lock state matters only while sessions last, and a server crash ends
-- them all), so a crash may forget the newest sequence values: the first grant after the
-- server started again (pg_postmaster_start_time() differs from `started`) moves the
-- sequence 2^32 ahead, durably, before it hands out a token.
CREATE SEQUENCE maos.fencing_tokens MINVALUE 1;
CREATE TABLE maos.token_epoch (
    one      boolean PRIMARY KEY DEFAULT true CHECK (one),
    started  timestamptz NOT NULL
);

-- Channels: `last` is the newest position assigned; it is incremented in the sending
-- transaction, whose row lock makes positions commit in order (no reader ever sees N+1
-- before N).
CREATE TABLE maos.channels (
    ns      bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    name    text NOT NULL,
    last    bigint NOT NULL DEFAULT 0,
    oldest  bigint NOT NULL DEFAULT 1,
    PRIMARY KEY (ns, name)
);
CREATE TABLE maos.messages (
    ns          bigint NOT NULL,
    channel     text NOT NULL,
    pos         bigint NOT NULL,
    id          uuid NOT NULL,
    sender      text NOT NULL,
    recipients  jsonb NOT NULL,
    body        text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ns, channel, pos),
    UNIQUE (ns, channel, id),
    FOREIGN KEY (ns, channel) REFERENCES maos.channels ON DELETE CASCADE
);
CREATE TABLE maos.consumers (
    ns          bigint NOT NULL,
    channel     text NOT NULL,
    name        text NOT NULL,
    position    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ns, channel, name),
    FOREIGN KEY (ns, channel) REFERENCES maos.channels ON DELETE CASCADE
);

-- Locks.
CREATE TABLE maos.lock_holders (
    ns           bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    id           bigint NOT NULL,
    resource     text NOT NULL,
    mode         text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    owner        text NOT NULL,
    session_key  bigint,
    process      jsonb,
    acquired_at  bigint NOT NULL,
    expires_at   bigint NOT NULL,
    ttl_ms       bigint NOT NULL,
    purpose      text NOT NULL,
    metadata     jsonb NOT NULL DEFAULT '{}',
    token        bigint NOT NULL,
    req          uuid NOT NULL,
    PRIMARY KEY (ns, id),
    UNIQUE (ns, req)
);
CREATE TABLE maos.lock_waiters (
    ns           bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    ticket       bigint NOT NULL,
    resource     text NOT NULL,
    mode         text NOT NULL CHECK (mode IN ('exclusive', 'shared')),
    agent        text NOT NULL,
    session_key  bigint NOT NULL,
    process      jsonb,
    since        bigint NOT NULL,
    purpose      text NOT NULL,
    aborted      jsonb,
    req          uuid NOT NULL,
    PRIMARY KEY (ns, ticket),
    UNIQUE (ns, req)
);
CREATE TABLE maos.lock_tokens (
    ns        bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    resource  text NOT NULL,
    token     bigint NOT NULL,
    PRIMARY KEY (ns, resource)
);

-- The agent registry: the record as maos-core defines it, plus the session anchor.
CREATE TABLE maos.agents (
    ns           bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    id           text NOT NULL,
    role         text,
    session_key  bigint,
    lease_until  bigint NOT NULL,
    dead_since   bigint,
    record       jsonb NOT NULL,
    PRIMARY KEY (ns, id)
);

-- Tasks: the log of changes (gapless `seq` per namespace, assigned under the `tasks` guard)
-- and the current task documents, each stamped with the `seq` of its latest change.
CREATE TABLE maos.task_log (
    ns      bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    seq     bigint NOT NULL,
    at      bigint NOT NULL,
    by      text,
    record  jsonb NOT NULL,
    req     uuid NOT NULL,
    PRIMARY KEY (ns, seq)
);
CREATE INDEX task_log_by_req ON maos.task_log (ns, req);
CREATE TABLE maos.tasks (
    ns           bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    id           text NOT NULL,
    created_seq  bigint NOT NULL,
    seq          bigint NOT NULL,
    status       text NOT NULL,
    assigned_to  text,
    doc          jsonb NOT NULL,
    PRIMARY KEY (ns, id)
);
CREATE INDEX tasks_by_seq ON maos.tasks (ns, seq);

-- The merge queue.
CREATE TABLE maos.merge_queue (
    ns      bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    id      bigint NOT NULL,
    source  text NOT NULL,
    target  text NOT NULL,
    status  text NOT NULL,
    entry   jsonb NOT NULL,
    PRIMARY KEY (ns, id)
);
