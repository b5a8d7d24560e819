//! maos-merge (built in its own issue).
