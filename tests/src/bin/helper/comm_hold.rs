//! Test helper: `comm_hold WORKSPACE CHANNEL` takes the channel's writer lock (as a writer
//! does while it appends), prints `held`, and keeps it until stdin closes: a process that a
//! test can suspend (SIGSTOP) in the middle of a channel write.

use std::io::Read;

use maos_coordination::core::fsx::LockFile;
use maos_coordination::{ChannelName, Workspace};

pub(crate) fn main() -> anyhow::Result<()> {
    let args: Vec<String> = crate::args().collect();
    let [_, ws, channel] = args.as_slice() else {
        anyhow::bail!("usage: comm_hold WORKSPACE CHANNEL");
    };
    let ws = Workspace::open(ws)?;
    let dir = ws
        .channel_dir(&ChannelName::new(channel.as_str())?)?
        .join(maos_coordination::comm::CHANNEL_DATA_DIR);
    let lock = LockFile::open(&dir.join("lock"))?;
    let _held = lock.exclusive(std::time::Duration::from_secs(10))?;
    println!("held");
    let mut rest = Vec::new();
    std::io::stdin().read_to_end(&mut rest)?;
    Ok(())
}
