//! The status of a failed request: Connect/gRPC codes and an error with its message, and
//! their HTTP statuses. Every component answers with these; the edge frames them.
use http::StatusCode;

/// Connect/gRPC status codes, with their gRPC numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    pub const ALL: [Code; 16] = [
        Code::Canceled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The code of a gRPC number (1..=16).
    pub fn from_number(n: u8) -> Option<Code> {
        Code::ALL.into_iter().find(|c| *c as u8 == n)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status Connect (and Pyroscope's legacy routes) use for a code.
    pub fn http_status(self) -> StatusCode {
        let s = match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound | Code::Unimplemented => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::FailedPrecondition => 412,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(s).expect("valid status")
    }

    /// The reverse mapping Pyroscope uses to put a code in legacy error bodies.
    pub fn from_http_status(s: StatusCode) -> Code {
        match s.as_u16() {
            400 | 413 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::Unimplemented,
            412 => Code::FailedPrecondition,
            429 | 431 => Code::ResourceExhausted,
            499 => Code::Canceled,
            502 | 503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    /// For a refused write: why, as Pyroscope's `reason` label names it
    /// (`distributor::discard`); never sent to the client.
    pub reason: Option<&'static str>,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into(), reason: None }
    }

    /// This error, counted as a discard for `reason`.
    pub fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
    /// An object storage failure of `what`: `unavailable` where a retry may succeed, else
    /// `internal`.
    pub fn store(what: &str, e: &kiln_io::store::StoreError) -> Self {
        let code = if e.kind().retryable() { Code::Unavailable } else { Code::Internal };
        Self::new(code, format!("{what}: {e}"))
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_tables() {
        assert_eq!(Code::ResourceExhausted.http_status(), 429);
        assert_eq!(Code::from_http_status(StatusCode::from_u16(422).unwrap()), Code::Unknown);
        assert_eq!(Code::from_http_status(StatusCode::PAYLOAD_TOO_LARGE), Code::InvalidArgument);
    }
}
