//! Text an attacker chose (a tool's log line, a message built from a
//! client's request) on its way to a log or a terminal: every control
//! character is written as an escape, so that no field can end a log
//! record and forge the next one (`\n`, `\r`, U+2028), or drive the
//! operator's terminal (ESC, CSI, OSC 52 clipboard writes, C1 controls).
//!
//! [`Stderr`] applies it to every record the daemon, launcher and workers
//! log, whichever field holds the bytes: one record is one line.
//! `clawosctl` applies [`controls`] to what it prints of a tool's.

use std::borrow::Cow;
use std::io::Write;

/// Must `c` be escaped? C0 and C1 controls and DEL (tab aside), and the
/// Unicode line and paragraph separators.
fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\t') || matches!(c, '\u{2028}' | '\u{2029}')
}

/// `s` with each control character written as `\n`, `\r` or `\u001b`
/// (the JSON spelling, so that a JSON record stays valid JSON); borrowed
/// when there is nothing to escape.
pub fn controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if needs_escape(c) => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{u:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A tool's output for a terminal: `bytes` as UTF-8 (invalid sequences
/// replaced), its lines and tabs kept, every other control escaped.
pub fn controls_keeping_lines(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .split('\n')
        .map(controls)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A log writer for `tracing_subscriber::fmt`, which writes each record
/// with one `write_all` of the whole formatted line: everything but the
/// record's own final newline is escaped, then it goes to stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (record, end) = match text.strip_suffix('\n') {
            Some(r) => (r, "\n"),
            None => (text.as_ref(), ""),
        };
        let line = format!("{}{end}", controls(record));
        std::io::stderr().lock().write_all(line.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_borrowed() {
        assert!(matches!(controls("a tool said: é\tok"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_control_is_escaped() {
        assert_eq!(
            controls(
                "a\nclawos-wasm-daemon ready\r\u{1b}]52;c;eA==\u{7}\u{1b}[2J\u{7f}\u{9b}\u{2028}"
            ),
            "a\\nclawos-wasm-daemon ready\\r\\u001b]52;c;eA==\\u0007\\u001b[2J\\u007f\\u009b\\u2028"
        );
    }

    #[test]
    fn every_escaped_char_leaves_one_line_of_printable_text() {
        for c in (0..=0x10ffffu32).filter_map(char::from_u32) {
            let s = c.to_string();
            let e = controls(&s);
            assert!(!e.chars().any(needs_escape), "{c:?} gave {e:?}");
            assert_eq!(e == s, !needs_escape(c), "{c:?}");
        }
    }

    #[test]
    fn terminal_output_keeps_its_lines() {
        assert_eq!(
            controls_keeping_lines(b"one\ttwo\nthree\r\x1b[2J\n\xff"),
            "one\ttwo\nthree\\r\\u001b[2J\n\u{fffd}"
        );
    }

    #[test]
    fn an_escaped_json_record_is_still_json() {
        let record = serde_json::json!({ "message": "x\u{1b}[31m\u{85}\u{2029}y" }).to_string();
        let escaped = controls(&record);
        let back: serde_json::Value = serde_json::from_str(&escaped).unwrap();
        assert_eq!(back["message"], "x\u{1b}[31m\u{85}\u{2029}y");
    }
}
