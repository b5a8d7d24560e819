//! Test helper: `comm_writer WORKSPACE CHANNEL WRITER COUNT` sends COUNT messages
//! `{"writer":WRITER,"seq":i}` and prints `ack <position> <i>` after each durable send.

use std::io::Write;

use maos_coordination::comm::FileChannel;
use maos_coordination::{AgentId, ChannelName, Message, Recipients, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().collect();
    let [_, ws, channel, writer, count] = args.as_slice() else {
        anyhow::bail!("usage: comm_writer WORKSPACE CHANNEL WRITER COUNT");
    };
    let ws = Workspace::open_or_init(ws)?;
    let ch = FileChannel::open(&ws, ChannelName::new(channel.as_str())?)?;
    let me = AgentId::new(format!("writer-{writer}"))?;
    let count: u64 = count.parse()?;
    let mut out = std::io::stdout().lock();
    for i in 0..count {
        let payload = serde_json::json!({ "writer": writer, "seq": i });
        let r = ch.send_blocking(&Message::new(me.clone(), Recipients::All, payload))?;
        writeln!(out, "ack {} {i}", r.position)?;
        out.flush()?;
    }
    Ok(())
}
