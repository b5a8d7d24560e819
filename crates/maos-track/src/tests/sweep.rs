//! Claims look for dead agents' claims at most once a second across all processes (the
//! store's `sweep` file records when), and always when nothing else is ready.

use std::time::{Duration, SystemTime};

use maos_core::{AgentRegistry, Priority, ProcessIdentity, Registration};

use super::{agent, setup};
use crate::{Task, TaskStatus, TaskTracker};

/// Registers `id` as an agent whose process ended (a session anchor from another boot).
fn dead(t: &TaskTracker, id: &str) {
    let gone = ProcessIdentity {
        boot_id: "a-boot-that-ended".into(),
        ..ProcessIdentity::current()
    };
    AgentRegistry::new(t.workspace())
        .register(Registration::new(agent(id)).process(gone))
        .unwrap();
}

/// Sets the time of the last look for dead agents to `ago` before now.
fn swept_ago(t: &TaskTracker, ago: Duration) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(t.dir().join("sweep"))
        .unwrap();
    f.set_modified(SystemTime::now() - ago).unwrap();
}

fn status(t: &TaskTracker, id: &maos_core::TaskId) -> (TaskStatus, Option<String>) {
    let task = t.get_blocking(id).unwrap().unwrap();
    (task.status, task.assigned_to.map(|a| a.to_string()))
}

#[test]
fn a_dead_agents_claim_is_released_when_a_look_is_due_or_nothing_else_is_ready() {
    let (_d, t) = setup();
    let mut urgent = Task::new("urgent");
    urgent.priority = Priority::High;
    let urgent = t.create_task_blocking(&urgent).unwrap();
    let other = t.create_task_blocking(&Task::new("other")).unwrap();
    let last = t.create_task_blocking(&Task::new("last")).unwrap();
    assert_eq!(
        t.claim_blocking(&agent("ghost")).unwrap().unwrap().id,
        urgent
    );
    dead(&t, "ghost");

    // Someone looked a moment ago: this claim takes the next task and does not look.
    swept_ago(&t, Duration::ZERO);
    assert_eq!(t.claim_blocking(&agent("w1")).unwrap().unwrap().id, other);
    assert_eq!(
        status(&t, &urgent),
        (TaskStatus::InProgress, Some("ghost".into()))
    );

    // A look is due: the dead agent's claim goes back first and is the best task.
    swept_ago(&t, Duration::from_secs(2));
    assert_eq!(t.claim_blocking(&agent("w2")).unwrap().unwrap().id, urgent);
    assert_eq!(
        status(&t, &urgent),
        (TaskStatus::InProgress, Some("w2".into()))
    );

    // A look is not due, but nothing else is ready: the claim looks anyway.
    swept_ago(&t, Duration::ZERO);
    assert_eq!(
        t.claim_blocking(&agent("ghost2")).unwrap().unwrap().id,
        last
    );
    dead(&t, "ghost2");
    swept_ago(&t, Duration::ZERO);
    assert_eq!(t.claim_blocking(&agent("w3")).unwrap().unwrap().id, last);
    assert!(t.claim_blocking(&agent("w4")).unwrap().is_none());
}

#[test]
fn a_clock_behind_the_sweep_file_or_a_fifo_in_its_place_still_looks_never_hangs() {
    let (_d, t) = setup();
    let a = t.create_task_blocking(&Task::new("a")).unwrap();
    let b = t.create_task_blocking(&Task::new("b")).unwrap();
    t.claim_blocking(&agent("ghost")).unwrap().unwrap();
    dead(&t, "ghost");
    // A time in the future (the clock was set back): a look is due.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(t.dir().join("sweep"))
        .unwrap();
    f.set_modified(SystemTime::now() + Duration::from_secs(3600))
        .unwrap();
    let got = t.claim_blocking(&agent("w1")).unwrap().unwrap().id;
    assert_eq!(got, a, "the dead agent's task went back and is first again");
    assert_eq!(status(&t, &b), (TaskStatus::Pending, None));

    // A FIFO named like the file: a look is due every time, nothing blocks on it.
    let p = t.dir().join("sweep");
    std::fs::remove_file(&p).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &p,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    assert_eq!(t.claim_blocking(&agent("w2")).unwrap().unwrap().id, b);
}
