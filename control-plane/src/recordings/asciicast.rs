//! tlog's JSON recording (log format 2.x, `/usr/share/doc/tlog/log_format.md`) to asciicast v2,
//! the format asciinema's player plays and `asciinema play` reads.
//!
//! A tlog message holds the text written and typed during a span (`out_txt`, `in_txt`, with
//! bytes that are not UTF-8 in `out_bin`/`in_bin`) and `timing`, which says in what order and
//! after which delays those pieces came, and when the window changed size:
//! `+N` waits N ms, `>N`/`<N` take N characters of output/input, `]A/B`/`[A/B` skip A replacement
//! characters of the text and take B bytes of the binary array, `=WxH` is a new window size. Each
//! message's `pos` is its offset in ms from the recording's start.
//!
//! asciicast v2 is a header line (`{"version": 2, "width", "height", ...}`) and one event per line,
//! `[seconds, "o" | "i" | "r", data]`. Bytes that were not UTF-8 are played as the replacement
//! characters tlog put in their place (asciicast's data is JSON text).

use serde::Deserialize;
use serde_json::json;

/// The window size when the recording states none (or 0x0: no terminal size was known).
const DEFAULT_WIDTH: u64 = 80;
const DEFAULT_HEIGHT: u64 = 24;

/// Why a recording cannot be converted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConvertError {
    #[error("line {line}: not a tlog message: {reason}")]
    Message { line: usize, reason: String },
    #[error("line {line}: timing {reason}")]
    Timing { line: usize, reason: &'static str },
}

#[derive(Debug, Deserialize)]
struct TlogMessage {
    #[serde(default)]
    pos: u64,
    #[serde(default)]
    time: Option<f64>,
    #[serde(default)]
    term: Option<String>,
    #[serde(default)]
    timing: String,
    #[serde(default)]
    in_txt: String,
    #[serde(default)]
    out_txt: String,
    #[serde(default)]
    in_bin: Vec<u8>,
    #[serde(default)]
    out_bin: Vec<u8>,
}

/// One event of the cast: its time in ms, its kind and data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Event {
    at_ms: u64,
    kind: &'static str,
    data: String,
}

/// Reads characters and bytes of one direction (input or output) of one message.
struct Stream<'a> {
    chars: std::str::Chars<'a>,
    bin_left: usize,
}

impl<'a> Stream<'a> {
    fn new(text: &'a str, bin: &[u8]) -> Self {
        Self {
            chars: text.chars(),
            bin_left: bin.len(),
        }
    }

    /// `n` characters of the text.
    fn take(&mut self, n: usize) -> Option<String> {
        let mut out = String::new();
        for _ in 0..n {
            out.push(self.chars.next()?);
        }
        Some(out)
    }

    /// `skip` replacement characters of the text, standing for `bytes` bytes of the array.
    fn take_bin(&mut self, skip: usize, bytes: usize) -> Option<String> {
        self.bin_left = self.bin_left.checked_sub(bytes)?;
        self.take(skip)
    }
}

fn number(s: &str) -> Option<u64> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn pair(s: &str, sep: char) -> Option<(u64, u64)> {
    let (a, b) = s.split_once(sep)?;
    Some((number(a)?, number(b)?))
}

fn usize_of(n: u64) -> Option<usize> {
    usize::try_from(n).ok()
}

/// Appends one message's events; returns the last window size it set.
fn message_events(
    message: &TlogMessage,
    line: usize,
    events: &mut Vec<Event>,
) -> Result<(), ConvertError> {
    let bad = |reason| ConvertError::Timing { line, reason };
    let mut output = Stream::new(&message.out_txt, &message.out_bin);
    let mut input = Stream::new(&message.in_txt, &message.in_bin);
    let mut at = message.pos;
    let timing = message.timing.as_bytes();
    let mut i = 0;
    while i < timing.len() {
        let op = timing[i];
        let start = i + 1;
        let mut end = start;
        while end < timing.len()
            && (timing[end].is_ascii_digit() || matches!(timing[end], b'/' | b'x'))
        {
            end += 1;
        }
        let arg = std::str::from_utf8(&timing[start..end]).map_err(|_| bad("is not text"))?;
        i = end;
        match op {
            b'+' => at = at.saturating_add(number(arg).ok_or(bad("has a bad delay"))?),
            b'>' | b'<' => {
                let n = number(arg)
                    .and_then(usize_of)
                    .ok_or(bad("has a bad count"))?;
                let (stream, kind) = if op == b'>' {
                    (&mut output, "o")
                } else {
                    (&mut input, "i")
                };
                let data = stream
                    .take(n)
                    .ok_or(bad("takes more text than the message has"))?;
                events.push(Event {
                    at_ms: at,
                    kind,
                    data,
                });
            }
            b']' | b'[' => {
                let (skip, bytes) = pair(arg, '/').ok_or(bad("has a bad binary count"))?;
                let (stream, kind) = if op == b']' {
                    (&mut output, "o")
                } else {
                    (&mut input, "i")
                };
                let data = stream
                    .take_bin(
                        usize_of(skip).ok_or(bad("has a bad binary count"))?,
                        usize_of(bytes).ok_or(bad("has a bad binary count"))?,
                    )
                    .ok_or(bad("takes more bytes than the message has"))?;
                events.push(Event {
                    at_ms: at,
                    kind,
                    data,
                });
            }
            b'=' => {
                let (w, h) = pair(arg, 'x').ok_or(bad("has a bad window size"))?;
                events.push(Event {
                    at_ms: at,
                    kind: "r",
                    data: format!("{w}x{h}"),
                });
            }
            _ => return Err(bad("has an unknown record")),
        }
    }
    Ok(())
}

/// Converts a whole tlog recording (its JSON lines, in order) to asciicast v2.
pub fn tlog_to_asciicast(recording: &[u8]) -> Result<Vec<u8>, ConvertError> {
    let mut events = Vec::new();
    let mut first_time = None;
    let mut term = None;
    for (index, raw) in recording.split(|b| *b == b'\n').enumerate() {
        let line = index + 1;
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let message: TlogMessage =
            serde_json::from_slice(raw).map_err(|e| ConvertError::Message {
                line,
                reason: e.to_string(),
            })?;
        first_time = first_time.or(message.time);
        term = term.or_else(|| message.term.clone());
        message_events(&message, line, &mut events)?;
    }
    // The first window size is the header's; a 0x0 (no size known) plays at the default.
    let (mut width, mut height) = (DEFAULT_WIDTH, DEFAULT_HEIGHT);
    if let Some(first) = events.iter().position(|e| e.kind == "r")
        && let Some((w, h)) = pair(&events[first].data, 'x')
    {
        if w > 0 && h > 0 {
            (width, height) = (w, h);
        }
        events.remove(first);
    }
    events.retain(|e| e.kind != "r" || e.data != "0x0");
    let mut header = json!({ "version": 2, "width": width, "height": height });
    if let Some(time) = first_time.filter(|t| t.is_finite() && *t >= 0.0) {
        // Whole seconds of the Unix time: the header's `timestamp` is an integer.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let seconds = time.floor() as u64;
        header["timestamp"] = json!(seconds);
    }
    if let Some(term) = term {
        header["env"] = json!({ "TERM": term.chars().take(64).collect::<String>() });
    }
    let mut out = header.to_string().into_bytes();
    out.push(b'\n');
    for event in events {
        #[allow(clippy::cast_precision_loss)]
        let seconds = event.at_ms as f64 / 1000.0;
        out.extend_from_slice(
            json!([seconds, event.kind, event.data])
                .to_string()
                .as_bytes(),
        );
        out.push(b'\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made with Debian's tlog: `tlog-rec -w file --latency=1 --payload=512 /bin/sh -c '...'`
    /// in an 80x24 terminal; two messages, the second 1.2 s in, with a byte that is not UTF-8.
    const SESSION: &[u8] = include_bytes!("session.tlog.jsonl");

    fn lines(cast: &[u8]) -> Vec<serde_json::Value> {
        std::str::from_utf8(cast)
            .expect("UTF-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    }

    fn output(cast: &[serde_json::Value]) -> String {
        cast[1..]
            .iter()
            .filter(|e| e[1] == "o")
            .map(|e| e[2].as_str().expect("text").to_owned())
            .collect()
    }

    #[test]
    fn a_real_tlog_recording_becomes_a_cast_that_plays_its_output_in_order() {
        let cast = lines(&tlog_to_asciicast(SESSION).expect("converts"));
        assert_eq!(cast[0]["version"], 2);
        assert_eq!(
            (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert_eq!(cast[0]["env"]["TERM"], "xterm");
        assert!(
            cast[0]["timestamp"]
                .as_u64()
                .is_some_and(|t| t > 1_700_000_000)
        );
        let text = output(&cast);
        assert!(
            text.starts_with("hello\r\n\u{1b}[1mbold\u{1b}[0m\r\n"),
            "{text:?}"
        );
        let first = text.find("line 1 of").expect("line 1");
        let twelfth = text.find("line 12 of").expect("line 12");
        let done = text.find("done").expect("done");
        assert!(first < twelfth && twelfth < done);
        // The byte 0xff plays as the replacement character tlog wrote for it.
        assert!(text.contains("é\r\n\u{fffd}x\r\n"), "{text:?}");
        // The second message starts 1.2 s in; times never go back.
        let times: Vec<f64> = cast[1..]
            .iter()
            .map(|e| e[0].as_f64().expect("time"))
            .collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        assert!(times.last().is_some_and(|t| *t >= 1.2), "{times:?}");
    }

    #[test]
    fn delays_input_and_window_changes_are_kept() {
        let message = json!({
            "ver": "2.3", "pos": 1000, "time": 1.5, "term": "xterm",
            "timing": "=100x30<2+250>3]1/1=120x40+5[1/2",
            "in_txt": "ls\u{fffd}", "in_bin": [200, 201],
            "out_txt": "a\r\n\u{fffd}", "out_bin": [255],
        });
        let cast = lines(&tlog_to_asciicast(format!("{message}\n").as_bytes()).expect("converts"));
        assert_eq!(
            (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
            (Some(100), Some(30))
        );
        assert_eq!(cast[1], json!([1.0, "i", "ls"]));
        assert_eq!(cast[2], json!([1.25, "o", "a\r\n"]));
        assert_eq!(cast[3], json!([1.25, "o", "\u{fffd}"]));
        assert_eq!(cast[4], json!([1.25, "r", "120x40"]));
        assert_eq!(cast[5], json!([1.255, "i", "\u{fffd}"]));
        assert_eq!(cast.len(), 6);
    }

    #[test]
    fn a_window_of_0x0_plays_at_the_default_size() {
        let message = json!({"pos": 0, "timing": "=0x0>2", "out_txt": "hi"});
        let cast = lines(&tlog_to_asciicast(format!("{message}\n").as_bytes()).expect("converts"));
        assert_eq!(
            (cast[0]["width"].as_u64(), cast[0]["height"].as_u64()),
            (Some(80), Some(24))
        );
        assert_eq!(cast[1], json!([0.0, "o", "hi"]));
    }

    #[test]
    fn malformed_recordings_are_refused_with_the_line() {
        let refused = |text: &str| tlog_to_asciicast(text.as_bytes()).expect_err(text);
        assert!(matches!(
            refused("{}\nnot json\n"),
            ConvertError::Message { line: 2, .. }
        ));
        assert!(matches!(
            refused(r#"{"timing": ">5", "out_txt": "abc"}"#),
            ConvertError::Timing {
                line: 1,
                reason: "takes more text than the message has"
            }
        ));
        assert!(matches!(
            refused(r#"{"timing": "]1/2", "out_txt": "?", "out_bin": [1]}"#),
            ConvertError::Timing {
                reason: "takes more bytes than the message has",
                ..
            }
        ));
        assert!(matches!(
            refused(r#"{"timing": "*3"}"#),
            ConvertError::Timing { .. }
        ));
        assert!(matches!(
            refused(r#"{"timing": "+"}"#),
            ConvertError::Timing { .. }
        ));
        assert!(matches!(
            refused(r#"{"timing": "=1x"}"#),
            ConvertError::Timing { .. }
        ));
    }
}
