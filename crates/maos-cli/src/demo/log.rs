//! Log lines of the demo's own process: while the live view is drawn they go into its event
//! log, so no raw log line breaks the drawing; otherwise to stderr as usual.

use std::io::Write;
use std::sync::Mutex;

/// Lines caught while the view runs (`None`: not capturing).
static CAUGHT: Mutex<Option<Vec<String>>> = Mutex::new(None);

/// The writer `maos demo` installs for its log (tracing-subscriber's `MakeWriter`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogSink;

/// One log event being written; handed over whole when dropped.
pub(crate) struct EventWriter {
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
        match caught.as_mut() {
            Some(lines) => lines.extend(
                String::from_utf8_lossy(&self.buf)
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(str::to_owned),
            ),
            None => {
                // Nowhere else to report a failing stderr.
                let _ = std::io::stderr().write_all(&self.buf);
            }
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogSink {
    type Writer = EventWriter;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter { buf: Vec::new() }
    }
}

/// Starts catching log lines (for the view's event log).
pub(crate) fn catch() {
    let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
    caught.get_or_insert_with(Vec::new);
}

/// The lines caught since the last call.
pub(crate) fn take() -> Vec<String> {
    let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
    caught.as_mut().map(std::mem::take).unwrap_or_default()
}

/// Stops catching; returns what was caught and not taken yet.
pub(crate) fn release() -> Vec<String> {
    let mut caught = CAUGHT.lock().unwrap_or_else(|p| p.into_inner());
    caught.take().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_caught_while_catching_and_written_through_otherwise() {
        catch();
        {
            let mut w = LogSink.make_writer_for_test();
            w.write_all(b"WARN something\n\n").unwrap();
        }
        assert_eq!(take(), vec!["WARN something".to_string()]);
        assert!(take().is_empty());
        {
            let mut w = LogSink.make_writer_for_test();
            w.write_all(b"left over\n").unwrap();
        }
        assert_eq!(release(), vec!["left over".to_string()]);
        assert!(take().is_empty());
    }

    impl LogSink {
        fn make_writer_for_test(&self) -> EventWriter {
            tracing_subscriber::fmt::MakeWriter::make_writer(self)
        }
    }
}
