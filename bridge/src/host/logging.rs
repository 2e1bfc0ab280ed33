//! `clawos:bridge/logging`: tool log lines into the daemon's `tracing` log,
//! each prefixed `[WASM]` with the tool name and instance id. Lines are cut to
//! `max_log_line_bytes`, rate-limited by a token bucket per instance, and kept
//! for the run's response up to `max_log_bytes`; what is dropped is counted.

use super::wit_logging::{Host, Level};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use wasmtime::component::HasData;

/// What a kept line costs against `max_log_bytes` beyond its text (its
/// level and its framing in the response), so that empty lines are
/// bounded too.
const LINE_COST: u64 = 16;

/// One captured log line, as returned with a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// "trace", "debug", "info", "warn" or "error".
    pub level: String,
    /// The message, truncated to the line limit.
    pub message: String,
}

/// Per-instance log state: limits, the bucket and what was captured.
#[derive(Debug)]
pub struct LogSink {
    tool: String,
    instance: u64,
    max_line: usize,
    max_bytes: u64,
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    kept_bytes: u64,
    /// Lines kept for the response.
    pub lines: Vec<LogLine>,
    /// Lines refused by the rate limit or the byte limit.
    pub dropped: u64,
}

impl LogSink {
    /// A sink for instance `instance` of `tool`.
    pub fn new(tool: &str, instance: u64, limits: &crate::config::SandboxLimits) -> LogSink {
        LogSink {
            tool: tool.to_owned(),
            instance,
            max_line: limits.max_log_line_bytes as usize,
            max_bytes: limits.max_log_bytes,
            rate: f64::from(limits.log_lines_per_second),
            burst: f64::from(limits.log_burst),
            tokens: f64::from(limits.log_burst),
            refilled: Instant::now(),
            kept_bytes: 0,
            lines: Vec::new(),
            dropped: 0,
        }
    }

    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Log `message` at `level`, subject to the limits.
    pub fn log(&mut self, level: Level, message: &str) {
        if !self.take_token() {
            self.dropped += 1;
            if self.dropped == 1 {
                tracing::warn!(target: "clawos::wasm", tool = %self.tool, instance = self.instance,
                    "[WASM] {}#{}: log rate limit reached; further lines are dropped and counted", self.tool, self.instance);
            }
            return;
        }
        let message = truncate(message, self.max_line);
        let (tool, id) = (&self.tool, self.instance);
        match level {
            Level::Trace => {
                tracing::trace!(target: "clawos::wasm", "[WASM] {tool}#{id}: {message}")
            }
            Level::Debug => {
                tracing::debug!(target: "clawos::wasm", "[WASM] {tool}#{id}: {message}")
            }
            Level::Info => tracing::info!(target: "clawos::wasm", "[WASM] {tool}#{id}: {message}"),
            Level::Warn => tracing::warn!(target: "clawos::wasm", "[WASM] {tool}#{id}: {message}"),
            Level::Error => {
                tracing::error!(target: "clawos::wasm", "[WASM] {tool}#{id}: {message}")
            }
        }
        let size = message.len() as u64 + LINE_COST;
        if self.kept_bytes + size > self.max_bytes {
            self.dropped += 1;
            return;
        }
        self.kept_bytes += size;
        self.lines.push(LogLine {
            level: level_name(level).to_owned(),
            message: message.to_owned(),
        });
    }
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The logging interface's view of an instance.
pub struct LoggingHost;

impl HasData for LoggingHost {
    type Data<'a> = &'a mut LogSink;
}

impl Host for &mut LogSink {
    fn log(&mut self, level: Level, message: String) -> wasmtime::Result<()> {
        LogSink::log(self, level, &message);
        Ok(())
    }
    fn debug(&mut self, message: String) -> wasmtime::Result<()> {
        LogSink::log(self, Level::Debug, &message);
        Ok(())
    }
    fn info(&mut self, message: String) -> wasmtime::Result<()> {
        LogSink::log(self, Level::Info, &message);
        Ok(())
    }
    fn warn(&mut self, message: String) -> wasmtime::Result<()> {
        LogSink::log(self, Level::Warn, &message);
        Ok(())
    }
    fn error(&mut self, message: String) -> wasmtime::Result<()> {
        LogSink::log(self, Level::Error, &message);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SandboxLimits;

    fn sink(burst: u32, max_line: u32, max_bytes: u64) -> LogSink {
        let limits = SandboxLimits {
            log_burst: burst,
            log_lines_per_second: 1,
            max_log_line_bytes: max_line,
            max_log_bytes: max_bytes,
            ..SandboxLimits::default()
        };
        LogSink::new("t", 1, &limits)
    }

    #[test]
    fn burst_then_drop_and_count() {
        let mut s = sink(3, 100, 1000);
        for i in 0..10 {
            s.log(Level::Info, &format!("line {i}"));
        }
        assert_eq!(s.lines.len(), 3);
        assert_eq!(s.dropped, 7);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        let mut s = sink(10, 16, 1000);
        s.log(Level::Warn, &"é".repeat(20));
        assert_eq!(s.lines[0].message, "é".repeat(8));
        assert_eq!(s.lines[0].level, "warn");
    }

    #[test]
    fn byte_limit_drops_and_counts() {
        let mut s = sink(100, 100, 30);
        s.log(Level::Info, "12345678");
        s.log(Level::Info, "12345678");
        assert_eq!(s.lines.len(), 1);
        assert_eq!(s.dropped, 1);
        // Empty lines cost their framing: 30 bytes hold one.
        let mut s = sink(100, 100, 30);
        for _ in 0..10 {
            s.log(Level::Info, "");
        }
        assert_eq!((s.lines.len(), s.dropped), (1, 9));
    }
}
