//! Crash-safe message channels for maos.

mod broadcast;
mod channel;
mod error;
mod log;
mod record;
mod retention;

pub use broadcast::{
    BroadcastChannel, BroadcastNotification, GLOBAL_FEED, TOPIC_PREFIX, topic_channel,
};
pub use channel::{
    Batch, CHANNEL_DATA_DIR, ChannelOptions, ChannelStats, Consumer, DEFAULT_MAX_MESSAGE,
    DEFAULT_SEGMENT_SIZE, Delivered, FileChannel, Filter, Pruned, Receipt,
};
pub use error::{Error, Result};
pub use log::{Cursor, Problem};
pub use retention::{PruneReport, Retention, channel_stats, list_channels};
