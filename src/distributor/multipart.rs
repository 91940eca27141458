//! A `multipart/form-data` body split into named parts. Bodies are already in memory (and
//! bounded), so this is a single pass over a slice, not a stream parser.

#[derive(Debug, PartialEq)]
pub struct Part<'a> {
    pub name: String,
    pub data: &'a [u8],
}

/// The boundary parameter of a `multipart/form-data` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut it = content_type.split(';');
    if !it.next()?.trim().eq_ignore_ascii_case("multipart/form-data") {
        return None;
    }
    it.find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("boundary").then(|| v.trim().trim_matches('"').to_string())
    })
    .filter(|b| !b.is_empty())
}

/// RFC 2046 §5.1.1: a boundary is 1 to 70 characters.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Linear in `hay` whatever the needle (a naive window scan is quadratic in the boundary).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(hay, needle)
}

/// Splits `body` at `boundary`. One pass: every search starts where the previous part ended
/// and what it scans is consumed, so the work is linear in the body.
pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
        return Err(format!(
            "the multipart boundary is {} characters long; RFC 2046 allows 1 to {MAX_BOUNDARY_LEN}",
            boundary.len()
        ));
    }
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let start = find(body, delim.as_bytes()).ok_or("multipart body has no boundary")?;
    let mut rest = &body[start + delim.len()..];
    let mut end_delim = b"\r\n".to_vec();
    end_delim.extend_from_slice(delim.as_bytes());
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
            .ok_or("malformed multipart boundary line")?;
        let (head_end, sep) = match find(rest, b"\r\n\r\n") {
            Some(i) => (i, 4),
            None => (find(rest, b"\n\n").ok_or("multipart part without headers end")?, 2),
        };
        let headers = std::str::from_utf8(&rest[..head_end]).map_err(|_| "multipart headers are not UTF-8")?;
        let name = headers
            .lines()
            .filter(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .find_map(|l| {
                l.split(';').find_map(|p| {
                    let (k, v) = p.trim().split_once('=')?;
                    (k.trim() == "name").then(|| v.trim().trim_matches('"').to_string())
                })
            })
            .ok_or("multipart part without a name")?;
        let content = &rest[head_end + sep..];
        let (end, dlen) = match find(content, &end_delim) {
            Some(i) => (i, end_delim.len()),
            // The same delimiter after a bare LF.
            None => (find(content, &end_delim[1..]).ok_or("multipart part is not terminated")?, end_delim.len() - 1),
        };
        parts.push(Part { name, data: &content[..end] });
        rest = &content[end + dlen..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_form() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"profile\"; filename=\"profile.pprof\"\r\nContent-Type: application/octet-stream\r\n\r\n\x1f\x8b\r\nbin\r\n--XyZ\r\nContent-Disposition: form-data; name=\"sample_type_config\"\r\n\r\n{}\r\n--XyZ--\r\n";
        let b = boundary("multipart/form-data; boundary=XyZ").unwrap();
        let parts = parse(body, &b).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "profile");
        assert_eq!(parts[0].data, b"\x1f\x8b\r\nbin");
        assert_eq!(parts[1].data, b"{}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse(b"nothing here", "b").is_err());
        assert!(parse(b"--b\r\nno headers end", "b").is_err());
        assert_eq!(boundary("application/json"), None);
    }

    #[test]
    fn boundaries_follow_rfc_2046() {
        let b70 = "b".repeat(70);
        let body = format!("--{b70}\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nx\r\n--{b70}--\r\n");
        assert_eq!(parse(body.as_bytes(), &b70).unwrap()[0].data, b"x");
        let b71 = "b".repeat(71);
        let body = format!("--{b71}\r\nContent-Disposition: form-data; name=\"p\"\r\n\r\nx\r\n--{b71}--\r\n");
        let e = parse(body.as_bytes(), &b71).unwrap_err();
        assert!(e.contains("71 characters") && e.contains("RFC 2046"), "{e}");
        assert!(parse(b"--\r\n", "").is_err());
    }

    #[test]
    fn bare_newlines_end_parts() {
        let body = b"--b\nContent-Disposition: form-data; name=\"p\"\n\nxy\n--b--\n";
        assert_eq!(parse(body, "b").unwrap()[0].data, b"xy");
    }
}
