//! Issue 11, item 6: a process suspended (SIGSTOP, Ctrl-Z, a laptop lid) while it holds a
//! channel's writer lock must not hang every other sender: `send` gives up at its timeout and
//! names the holder, saying that it is stopped. The holder is a real process.

#![allow(clippy::unwrap_used)] // test code: a panic with its message is the failure report

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use maos_coordination::comm::{ChannelOptions, FileChannel};
use maos_coordination::{AgentId, ChannelName, Message, Recipients, Workspace};

fn state_of(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[test]
fn a_stopped_writer_makes_others_time_out_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let ws = Workspace::init(dir.path()).unwrap();
    let name = ChannelName::new("work").unwrap();
    let ch = FileChannel::open(&ws, name.clone()).unwrap();
    let me = AgentId::new("a").unwrap();
    ch.send_blocking(&Message::new(me.clone(), Recipients::All, 1))
        .unwrap();
    let mut holder = crate::helper("comm_hold")
        .arg(dir.path())
        .arg("work")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = holder.id();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::STOP,
    )
    .unwrap();
    // Wait until the kernel reports it stopped (a condition, not a fixed sleep).
    loop {
        match state_of(pid) {
            Some('T') => break,
            Some(_) => std::thread::yield_now(),
            None => panic!("the holder {pid} is gone"),
        }
    }
    let quick = FileChannel::open_with(
        &ws,
        name,
        ChannelOptions::default().lock_timeout(Duration::from_millis(300)),
    )
    .unwrap();
    let err = quick
        .send_blocking(&Message::new(me, Recipients::All, 2))
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let text = chain(&err);
    assert!(text.contains(&format!("pid {pid}")), "{text}");
    assert!(text.contains("stopped"), "{text}");
    assert!(text.contains("kill -CONT"), "{text}");
    // Resumed and gone, the lock is free again.
    holder.kill().unwrap();
    holder.wait().unwrap();
    let r = quick
        .send_blocking(&Message::new(
            AgentId::new("a").unwrap(),
            Recipients::All,
            3,
        ))
        .unwrap();
    assert_eq!(r.position, 2);
}
