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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn parse<'a>(body: &'a [u8], boundary: &str) -> Result<Vec<Part<'a>>, String> {
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let start = find(body, delim.as_bytes()).ok_or("multipart body has no boundary")?;
    let mut rest = &body[start + delim.len()..];
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
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(delim.as_bytes());
        let (end, dlen) = match find(content, &end_delim) {
            Some(i) => (i, end_delim.len()),
            None => {
                let mut nl = b"\n".to_vec();
                nl.extend_from_slice(delim.as_bytes());
                (find(content, &nl).ok_or("multipart part is not terminated")?, nl.len())
            }
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
}
