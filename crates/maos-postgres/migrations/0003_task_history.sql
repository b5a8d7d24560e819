-- Schema version 3: the history of each task (what `maos task show` prints), as on the
-- files. Every write to `maos.task_log` also inserts here, in the same statement, the
-- events its records cause (one JSON object of docs/protocol.md section 8's event shape
-- each: `{"seq","at","by","forced","event",...}`), keyed by task so that reading one
-- task's history never reads the log. `n` orders the events of one write.
-- Records written before version 3 have no events here: their tasks' histories start at
-- the first write after the upgrade.
CREATE TABLE maos.task_events (
    ns      bigint NOT NULL REFERENCES maos.namespaces ON DELETE CASCADE,
    task    text NOT NULL,
    seq     bigint NOT NULL,
    n       integer NOT NULL,
    event   jsonb NOT NULL,
    PRIMARY KEY (ns, task, seq, n)
);
