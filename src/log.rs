//! kiln's log lines, in Pyroscope's formats (`-log.format`): logfmt (`level=info
//! ts=2026-11-30T10:00:00.123Z msg="…" key=value`, go-kit's order) or one JSON object per
//! line, on stderr.
use crate::config::{LogFormat, LogLevel};
use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Sets the process's log subscriber.
pub fn init(level: LogLevel, format: LogFormat) {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::from(level))
        .with_writer(std::io::stderr)
        .event_format(Line { format })
        .init();
}

/// Formats one event as a line.
struct Line {
    format: LogFormat,
}

/// An event's message and fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    pairs: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.put(field, format!("{value:?}"));
    }
}

impl Fields {
    fn put(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.pairs.push((field.name(), value));
        }
    }
}

impl<S, N> FormatEvent<S, N> for Line
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut w: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let mut f = Fields::default();
        event.record(&mut f);
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        let ts = crate::timeparse::rfc3339(crate::timeparse::now_ns(), 3);
        let line = match self.format {
            LogFormat::Logfmt => logfmt(&level, &ts, &f),
            LogFormat::Json => json(&level, &ts, &f),
        };
        writeln!(w, "{line}")
    }
}

fn logfmt(level: &str, ts: &str, f: &Fields) -> String {
    let mut out = format!("level={level} ts={ts}");
    let pairs = std::iter::once(("msg", f.message.as_str())).chain(f.pairs.iter().map(|(k, v)| (*k, v.as_str())));
    for (k, v) in pairs {
        let _ = write!(out, " {k}={}", logfmt_value(v));
    }
    out
}

/// A logfmt value: bare when it is a plain word, else quoted with `"` and `\` escaped and
/// control characters written as escapes (a value can never break the line).
fn logfmt_value(v: &str) -> String {
    let plain = !v.is_empty() && v.chars().all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(level: &str, ts: &str, f: &Fields) -> String {
    let mut m = serde_json::Map::new();
    m.insert("level".into(), level.into());
    m.insert("ts".into(), ts.into());
    m.insert("msg".into(), f.message.clone().into());
    for (k, v) in &f.pairs {
        // The first of a repeated key wins, as logfmt readers take it.
        m.entry(k.to_string()).or_insert_with(|| v.clone().into());
    }
    serde_json::Value::Object(m).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(msg: &str, pairs: &[(&'static str, &str)]) -> Fields {
        Fields { message: msg.into(), pairs: pairs.iter().map(|(k, v)| (*k, v.to_string())).collect() }
    }

    #[test]
    fn logfmt_quotes_what_would_break_a_line() {
        let f = fields("push refused", &[("tenant", "t1"), ("reason", "rate \"limited\"\nnow"), ("n", "")]);
        assert_eq!(
            logfmt("warn", "2026-11-30T10:00:00.000Z", &f),
            r#"level=warn ts=2026-11-30T10:00:00.000Z msg="push refused" tenant=t1 reason="rate \"limited\"\nnow" n="""#
        );
    }

    #[test]
    fn json_lines_are_objects() {
        let f = fields("listening", &[("addr", "127.0.0.1:4040"), ("addr", "x")]);
        let v: serde_json::Value = serde_json::from_str(&json("info", "ts", &f)).unwrap();
        assert_eq!(v, serde_json::json!({"level": "info", "ts": "ts", "msg": "listening", "addr": "127.0.0.1:4040"}));
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds() {
        assert_eq!(crate::timeparse::rfc3339(1_700_000_000_123_456_789, 3), "2023-11-14T22:13:20.123Z");
        assert_eq!(crate::timeparse::rfc3339(-1, 3), "1969-12-31T23:59:59.999Z");
    }
}
