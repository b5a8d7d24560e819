//! maos-comm (built in its own issue).
