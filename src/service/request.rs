//! A request as components see it: method, path, query string, headers and the whole body
//! (read, bounded, by the edge).
use bytes::Bytes;
use http::{HeaderMap, Method};

/// A request with its body read in full (bounded).
pub struct Req {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    /// Whether the body says `Content-Encoding: gzip`.
    pub fn gzip_encoded(&self) -> bool {
        self.headers
            .get(http::header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"))
    }

    pub fn params(&self) -> Vec<(String, String)> {
        form_urlencoded(&self.query)
    }
    pub fn param(&self, name: &str) -> Option<String> {
        self.params().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

/// Decodes an `application/x-www-form-urlencoded` string.
pub fn form_urlencoded(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    String::from_utf8_lossy(&percent_decode_bytes(s)).into_owned()
}

/// Decodes `%XX` escapes (and `+` as a space) into bytes, as they are: binary values (a
/// Connect GET's protobuf message) are not text. A `%` without two hex digits stays as it is.
pub fn percent_decode_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urlencoded() {
        let p = form_urlencoded("name=app.cpu%7Bk%3Dv%7D&from=1&x=a+b&bad=%zz&end=%4");
        assert_eq!(p[0], ("name".into(), "app.cpu{k=v}".into()));
        assert_eq!(p[2].1, "a b");
        assert_eq!(p[3].1, "%zz");
        assert_eq!(p[4].1, "%4");
        assert_eq!(percent_decode_bytes("%00%ff+a%zz"), vec![0, 0xff, b' ', b'a', b'%', b'z', b'z']);
    }
}
