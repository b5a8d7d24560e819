//! maos-track (built in its own issue).
