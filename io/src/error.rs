//! What a caller can do about an error: the kind every error enum that crosses cores, crates
//! or the store thread reports (`kind()`), so callers match on it instead of on text.

/// What a caller can do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Transient: the same call may succeed later (the network, a full disk or queue, a busy
    /// core).
    Retryable,
    /// What was asked for does not exist.
    NotFound,
    /// The request or the stored data is invalid or corrupt: the same call fails again.
    Invalid,
    /// Anything else a retry does not fix: configuration, permissions, a stopped component, a
    /// bug.
    Fatal,
}

impl ErrorKind {
    /// Whether the same call may succeed if retried.
    pub fn retryable(self) -> bool {
        self == ErrorKind::Retryable
    }

    /// The kind of a local I/O error: a missing file, a file shorter than its index says
    /// (corrupt), or anything else, taken as transient (a full disk, an interrupted read).
    pub fn of_io(e: &std::io::Error) -> ErrorKind {
        match e.kind() {
            std::io::ErrorKind::NotFound => ErrorKind::NotFound,
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData => ErrorKind::Invalid,
            std::io::ErrorKind::PermissionDenied => ErrorKind::Fatal,
            _ => ErrorKind::Retryable,
        }
    }
}
