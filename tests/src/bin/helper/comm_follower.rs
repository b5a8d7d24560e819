//! Test helper: `comm_follower WORKSPACE CHANNEL` follows the channel from its start with a
//! `ChannelWatcher` and prints `<position> <writer> <seq>` per message, until a message with
//! payload `{"end":true}` arrives.

use std::io::Write;

use maos_coordination::comm::{ChannelWatcher, Cursor, FileChannel, Filter};
use maos_coordination::{ChannelName, Workspace};

#[tokio::main(flavor = "current_thread")]
pub(crate) async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().collect();
    let [_, ws, channel] = args.as_slice() else {
        anyhow::bail!("usage: comm_follower WORKSPACE CHANNEL");
    };
    let ws = Workspace::open_or_init(ws)?;
    let ch = FileChannel::open(&ws, ChannelName::new(channel.as_str())?)?;
    let mut w = ChannelWatcher::from_cursor(ch, Cursor::start(), Filter::Everything)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Tell the test we are watching.
    writeln!(out, "ready")?;
    out.flush()?;
    loop {
        let d = w.next::<serde_json::Value>().await?;
        for n in w.take_notices() {
            writeln!(out, "notice {n:?}")?;
        }
        let p = &d.message.payload;
        if p.get("end").is_some() {
            break;
        }
        writeln!(
            out,
            "{} {} {}",
            d.position,
            p["writer"].as_str().unwrap_or("?"),
            p["seq"]
        )?;
    }
    out.flush()?;
    Ok(())
}
