//! `-config.expand-env`: environment variables in the `-config.file` text, replaced before
//! the YAML is parsed, with Pyroscope's (dskit's) rules: Go's `os.Expand` with a mapping that
//! splits `name:default` at the first `:`.
//!
//! 1. `${NAME}` and `$NAME` (letters, digits, `_`) are replaced by the variable's value; an
//!    unset variable is the empty string.
//! 2. `${NAME:default}` is `default` when `NAME` is unset *or empty* (the default may hold
//!    `:` and spaces; it ends at the first `}`).
//! 3. `$` followed by one of `*#$@!?-` or a digit names that one-character variable (so `$$`
//!    is the variable `$`, empty), as in Go.
//! 4. `${}` and an unclosed `${` are dropped; a `$` followed by anything else, or last in
//!    the text, stays as it is.

/// The text with every reference replaced through `lookup` (the environment in `from_args`).
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> String {
    let value = |reference: &str| -> String {
        let (name, default) = match reference.split_once(':') {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => v,
            (None, Some(default)) => default.to_string(),
            (None, None) => String::new(),
        }
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] != b'$' {
            i += 1;
            continue;
        }
        out.push_str(&text[copied..i]);
        let (reference, width) = shell_name(&text[i + 1..]);
        match reference {
            Some(name) => out.push_str(&value(name)),
            // Valid syntax but no name: the `$` stays.
            None if width == 0 => out.push('$'),
            // Bad syntax (`${}`, an unclosed `${`): eaten.
            None => {}
        }
        i += 1 + width;
        copied = i;
    }
    out.push_str(&text[copied..]);
    out
}

/// The reference after a `$` and the bytes it spans: `None` with a width of 0 when no name
/// follows, `None` with a width above 0 for bad syntax to drop (Go's `getShellName`).
fn shell_name(rest: &str) -> (Option<&str>, usize) {
    let bytes = rest.as_bytes();
    debug_assert!(!bytes.is_empty(), "a `$` last in the text is copied, never looked at");
    if bytes[0] == b'{' {
        if bytes.len() > 2 && is_special(bytes[1]) && bytes[2] == b'}' {
            return (Some(&rest[1..2]), 3);
        }
        return match rest.find('}') {
            Some(1) => (None, 2),
            Some(end) => (Some(&rest[1..end]), end + 1),
            None => (None, 1),
        };
    }
    if is_special(bytes[0]) {
        return (Some(&rest[..1]), 1);
    }
    let end = bytes.iter().position(|&b| !(b == b'_' || b.is_ascii_alphanumeric())).unwrap_or(bytes.len());
    if end == 0 {
        (None, 0)
    } else {
        (Some(&rest[..end]), end)
    }
}

fn is_special(b: u8) -> bool {
    matches!(b, b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-') || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "PORT" => Some("4100".into()),
            "EMPTY" => Some(String::new()),
            "A_1" => Some("x".into()),
            _ => None,
        }
    }

    #[test]
    fn test_expand_env_follows_go_os_expand_with_defaults() {
        let cases = [
            ("port: ${PORT}", "port: 4100"),
            ("port: $PORT", "port: 4100"),
            ("port: ${PORT:9}", "port: 4100"),
            ("port: ${UNSET:4040}", "port: 4040"),
            ("port: ${EMPTY:4040}", "port: 4040"),
            ("url: ${UNSET:http://h:1/p}", "url: http://h:1/p"),
            ("v: ${UNSET}", "v: "),
            ("v: $A_1-$A_1.", "v: x-x."),
            ("v: a$$b", "v: ab"),
            ("v: $1b", "v: b"),
            ("v: ${}x", "v: x"),
            ("v: ${PORT", "v: PORT"),
            ("v: $ and $", "v: $ and $"),
            ("v: $.", "v: $."),
            ("héllo ${PORT}é", "héllo 4100é"),
            ("", ""),
        ];
        for (text, want) in cases {
            assert_eq!(expand(text, &env), want, "{text:?}");
        }
    }
}
