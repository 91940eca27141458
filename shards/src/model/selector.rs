//! Prometheus label selectors (`{a="b", c!="d", e=~"re.*", f!~"x"}`), as Pyroscope accepts them
//! in `label_selector`, `matchers` and render `query` strings.
use crate::model::labels::{Labels, NAME};
use regex::{Regex, RegexBuilder};

/// The most heap one compiled regular expression may take (the `regex` crate's own default,
/// 10 MiB, let a 25-byte pattern such as `(\w{100}){100}` cost 17 MiB and 850,000
/// allocations while it was refused). Selectors arrive from clients and, in a cluster, from
/// other instances: a pattern must cost a bounded amount whoever sends it. A realistic
/// selector regex (`app-.*`, `a|b|c`, `[a-z0-9-]+`) compiles to a few KiB; Grafana's
/// multi-value variables send alternations of every selected value, and 500 of them need
/// more than 256 KiB (tested below), hence 1 MiB.
pub const MAX_REGEX_BYTES: usize = 1 << 20;

/// The most regex matchers (`=~`, `!~`) one selector may hold: each is compiled, so a
/// selector of many short patterns would otherwise cost thousands of bytes per byte of it.
pub const MAX_REGEX_MATCHERS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    /// Fully anchored, compiled once at parse time.
    re: Option<Regex>,
}

impl Matcher {
    pub fn new(name: impl Into<String>, op: MatchOp, value: impl Into<String>) -> Result<Self, String> {
        let value = value.into();
        let re = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(
                RegexBuilder::new(&format!("^(?s:{value})$"))
                    .size_limit(MAX_REGEX_BYTES)
                    .build()
                    .map_err(|e| format!("invalid regular expression {value:?}: {e}"))?,
            ),
            _ => None,
        };
        Ok(Matcher { name: name.into(), op, value, re })
    }

    /// A missing label matches as the empty string, as in Prometheus.
    pub fn matches_value(&self, v: &str) -> bool {
        match self.op {
            MatchOp::Equal => v == self.value,
            MatchOp::NotEqual => v != self.value,
            MatchOp::Regex => self.re.as_ref().is_some_and(|r| r.is_match(v)),
            MatchOp::NotRegex => !self.re.as_ref().is_some_and(|r| r.is_match(v)),
        }
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.matches_value(labels.get(&self.name).unwrap_or(""))
    }
}

pub fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.matches(labels))
}

/// Refuses a selector of more than [`MAX_REGEX_MATCHERS`] regex matchers; called as each
/// matcher is added, before the next one is compiled.
pub fn check_regex_count(matchers: &[Matcher]) -> Result<(), String> {
    let n = matchers.iter().filter(|m| m.re.is_some()).count();
    if n > MAX_REGEX_MATCHERS {
        return Err(format!("a selector of more than {MAX_REGEX_MATCHERS} regex matchers"));
    }
    Ok(())
}

/// Parses `name{...}`, `{...}` or an empty string (no matchers).
pub fn parse_selector(input: &str) -> Result<Vec<Matcher>, String> {
    let mut p = Parser { s: input.as_bytes(), i: 0 };
    let mut out = Vec::new();
    p.ws();
    if p.eof() {
        return Ok(out);
    }
    if p.peek() != Some(b'{') {
        let name = p.ident().ok_or_else(|| p.err("expected a metric name or '{'"))?;
        out.push(Matcher::new(NAME, MatchOp::Equal, name)?);
        p.ws();
        if p.eof() {
            return Ok(out);
        }
    }
    p.expect(b'{')?;
    loop {
        p.ws();
        if p.peek() == Some(b'}') {
            p.i += 1;
            break;
        }
        let name = if p.peek() == Some(b'"') || p.peek() == Some(b'\'') {
            p.string()?
        } else {
            p.ident().ok_or_else(|| p.err("expected a label name"))?
        };
        p.ws();
        let op = match (p.peek(), p.s.get(p.i + 1).copied()) {
            (Some(b'='), Some(b'~')) => {
                p.i += 2;
                MatchOp::Regex
            }
            (Some(b'!'), Some(b'~')) => {
                p.i += 2;
                MatchOp::NotRegex
            }
            (Some(b'!'), Some(b'=')) => {
                p.i += 2;
                MatchOp::NotEqual
            }
            (Some(b'='), _) => {
                p.i += 1;
                MatchOp::Equal
            }
            // `{"metric"}`: a quoted name alone selects the metric name.
            (Some(b',') | Some(b'}'), _) => {
                out.push(Matcher::new(NAME, MatchOp::Equal, name)?);
                if p.peek() == Some(b',') {
                    p.i += 1;
                }
                continue;
            }
            _ => return Err(p.err("expected one of =, !=, =~, !~")),
        };
        p.ws();
        let value = p.string()?;
        out.push(Matcher::new(name, op, value)?);
        check_regex_count(&out)?;
        p.ws();
        match p.peek() {
            Some(b',') => p.i += 1,
            Some(b'}') => {}
            _ => return Err(p.err("expected ',' or '}'")),
        }
    }
    p.ws();
    if !p.eof() {
        return Err(p.err("unexpected characters after '}'"));
    }
    Ok(out)
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }
    fn err(&self, what: &str) -> String {
        format!("parse error at char {}: {what}", self.i + 1)
    }
    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err(&format!("expected '{}'", c as char)))
        }
    }
    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        while let Some(c) = self.peek() {
            let ok = c.is_ascii_alphabetic() || c == b'_' || c == b':' || (self.i > start && c.is_ascii_digit());
            if !ok {
                break;
            }
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    /// A Go/PromQL string literal: "..." or '...' with backslash escapes, or `raw`.
    fn string(&mut self) -> Result<String, String> {
        let q = self.peek().ok_or_else(|| self.err("expected a quoted string"))?;
        if q != b'"' && q != b'\'' && q != b'`' {
            return Err(self.err("expected a quoted string"));
        }
        self.i += 1;
        let mut out: Vec<u8> = Vec::new();
        loop {
            let c = self.peek().ok_or_else(|| self.err("unterminated string"))?;
            self.i += 1;
            if c == q {
                break;
            }
            if c == b'\\' && q != b'`' {
                let e = self.peek().ok_or_else(|| self.err("unterminated string"))?;
                self.i += 1;
                match e {
                    b'n' => out.push(b'\n'),
                    b't' => out.push(b'\t'),
                    b'r' => out.push(b'\r'),
                    b'\\' => out.push(b'\\'),
                    b'"' => out.push(b'"'),
                    b'\'' => out.push(b'\''),
                    b'a' => out.push(7),
                    b'b' => out.push(8),
                    b'f' => out.push(12),
                    b'v' => out.push(11),
                    b'x' => {
                        let h = self.s.get(self.i..self.i + 2).ok_or_else(|| self.err("bad \\x escape"))?;
                        let v = u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16)
                            .map_err(|_| self.err("bad \\x escape"))?;
                        out.push(v);
                        self.i += 2;
                    }
                    b'u' | b'U' => {
                        let n = if e == b'u' { 4 } else { 8 };
                        let h = self.s.get(self.i..self.i + n).ok_or_else(|| self.err("bad unicode escape"))?;
                        let v = u32::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16)
                            .ok()
                            .and_then(char::from_u32)
                            .ok_or_else(|| self.err("bad unicode escape"))?;
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(v.encode_utf8(&mut buf).as_bytes());
                        self.i += n;
                    }
                    _ => return Err(self.err("unknown escape sequence")),
                }
            } else {
                out.push(c);
            }
        }
        String::from_utf8(out).map_err(|_| self.err("string is not valid UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn parses_all_operators() {
        let m = parse_selector(r#"{a="b", c!="d", e=~"re.*", f!~'x',}"#).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].op, MatchOp::NotEqual);
        let labels = l(&[("a", "b"), ("c", "x"), ("e", "regex")]);
        assert!(matches_all(&m, &labels));
        assert!(!matches_all(&m, &l(&[("a", "b"), ("c", "d"), ("e", "re")])));
    }

    #[test]
    fn regex_is_anchored() {
        let m = parse_selector(r#"{a=~"b"}"#).unwrap();
        assert!(!m[0].matches(&l(&[("a", "abc")])));
        assert!(m[0].matches(&l(&[("a", "b")])));
    }

    #[test]
    fn missing_label_is_empty() {
        let m = parse_selector(r#"{a=""}"#).unwrap();
        assert!(m[0].matches(&l(&[])));
        let m = parse_selector(r#"{a!="x"}"#).unwrap();
        assert!(m[0].matches(&l(&[])));
    }

    #[test]
    fn empty_and_metric_name() {
        assert!(parse_selector("{}").unwrap().is_empty());
        assert!(parse_selector("").unwrap().is_empty());
        let m = parse_selector(r#"up{"k8s.pod.name"="x"}"#).unwrap();
        assert_eq!(m[0].name, NAME);
        assert_eq!(m[1].name, "k8s.pod.name");
    }

    #[test]
    fn errors() {
        for bad in ["{a=b}", "{a=\"b\"", "{a~\"b\"}", "{=\"b\"}", "{a=\"b\"} x", "{a=~\"(\"}", "{a=\"\\q\"}"] {
            assert!(parse_selector(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn regexes_are_bounded_in_number_and_size() {
        let n = |k: usize| {
            let m: Vec<String> = (0..k).map(|i| format!("l{i}=~\"a.*\"")).collect();
            parse_selector(&format!("{{{}, x=\"1\"}}", m.join(", ")))
        };
        assert_eq!(n(MAX_REGEX_MATCHERS).unwrap().len(), MAX_REGEX_MATCHERS + 1);
        assert!(n(MAX_REGEX_MATCHERS + 1).unwrap_err().contains("regex matchers"));
        // Equality matchers compile nothing and are not counted.
        let eq: Vec<String> = (0..100).map(|i| format!("l{i}=\"a\"")).collect();
        assert_eq!(parse_selector(&format!("{{{}}}", eq.join(","))).unwrap().len(), 100);
        // Realistic patterns compile; one that compiles to far more than the limit does not.
        for ok in ["app-.*", "(a|b|c)", "[a-z0-9-]+", "\\w+", "(?i)Service.*Name", ".*\\d{3}.*"] {
            Matcher::new("a", MatchOp::Regex, ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        // Grafana's multi-value variables send alternations of every selected value.
        let many: Vec<String> = (0..500).map(|i| format!("checkout-service-{i}-production")).collect();
        Matcher::new("service_name", MatchOp::Regex, many.join("|")).expect("500 alternatives compile");
        assert!(Matcher::new("a", MatchOp::NotRegex, "(\\w{100}){100}").is_err());
    }
}
