-- maos schema version 2: agents' inboxes (crates/maos-postgres/src/inbox.rs). Applied by maos
-- itself inside one transaction; docs/protocol.md, section 10, says what each table means.

-- An agent's stored topic subscriptions: a broadcast comes to its inbox when its topic
-- matches `pattern` and its position on the feed (`broadcast/global`) is after `since`, the
-- feed's newest position when the pattern was stored (from the moment it subscribed).
CREATE TABLE maos.inbox_subscriptions (
    ns          bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    agent       text NOT NULL,
    pattern     text NOT NULL,
    since       bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ns, agent, pattern)
);

-- An agent's acknowledged position per channel (the feed's under `broadcast/global`): its
-- inbox reads forward from here. Acknowledging moves positions with GREATEST, in one
-- transaction per batch, so they never move back.
CREATE TABLE maos.inbox_cursors (
    ns          bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    agent       text NOT NULL,
    channel     text NOT NULL,
    position    bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (ns, agent, channel)
);
