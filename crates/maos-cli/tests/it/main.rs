//! The tests of the `maos` binary, as one test binary: one module per command group, and the
//! harness ([`util`]) they share.

mod agents_cli;
mod backend_cli;
mod cli;
mod cli_conventions;
mod comm_cli;
mod comm_issues;
mod dashboard_cli;
mod demo_e2e;
mod docs;
mod hooks_cli;
mod inbox_cli;
mod lock_cli;
mod mcp_cli;
mod merge_cli;
mod snippets;
mod task_backends;
mod task_cli;
mod util;
