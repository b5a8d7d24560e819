//! maos-lock (built in its own issue).
