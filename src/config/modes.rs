//! The configuration's modes, parsed once from their flag or YAML strings into enums: the
//! WAL's sync policy, the storage backend, the log level and `-target`. Each shows as the
//! string it was given in `/config`.
use serde::{Serialize, Serializer};

/// `a, b or c`.
fn one_of<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    }
}

/// An enum of named modes: its variants with their flag spellings, `as_str`, `FromStr`
/// (an error lists the known spellings), `Display` and `Serialize` as the spelling.
macro_rules! modes {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(format!("expected {}", one_of($name::ALL.iter().map(|m| m.as_str())))),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

modes!(
    /// When a WAL write counts as durable (`-ingester.wal-sync-policy`).
    WalSyncPolicy {
        /// After `fdatasync`: an acknowledged push survives a power loss.
        Fsync => "fsync",
        /// After the write: survives a crash of kiln, not of the machine.
        Write => "write",
    }
);

impl From<WalSyncPolicy> for kiln_io::wal::segment::SyncPolicy {
    fn from(p: WalSyncPolicy) -> Self {
        match p {
            WalSyncPolicy::Fsync => kiln_io::wal::segment::SyncPolicy::Fsync,
            WalSyncPolicy::Write => kiln_io::wal::segment::SyncPolicy::Write,
        }
    }
}

modes!(
    /// Where blocks are stored (`-storage.backend`).
    BackendKind {
        Filesystem => "filesystem",
        S3 => "s3",
        Gcs => "gcs",
        Azure => "azure",
    }
);

modes!(
    /// How log lines are written (`-log.format`), as Pyroscope's.
    LogFormat {
        /// `level=info ts=… msg="…" key=value`.
        Logfmt => "logfmt",
        /// One JSON object per line.
        Json => "json",
    }
);

modes!(
    /// How much kiln logs (`-log.level`).
    LogLevel {
        Debug => "debug",
        Info => "info",
        Warn => "warn",
        Error => "error",
    }
);

impl From<LogLevel> for tracing::Level {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }
}

modes!(
    /// One of Pyroscope's components, by its `-target` name, in the order a monolith starts
    /// them (see `target`).
    Component {
        StoreGateway => "store-gateway",
        Ingester => "ingester",
        Distributor => "distributor",
        Querier => "querier",
        QueryFrontend => "query-frontend",
        QueryScheduler => "query-scheduler",
        Compactor => "compactor",
    }
);

/// What `-target` asks a process to run: `all` (every component this version has, in one
/// process) or a set of components, each its own part of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// Bit `c as u8` for each component `c` the process runs.
    bits: u16,
    /// Spelled `all` (shown so in `/config`).
    all: bool,
}

impl Target {
    /// The components `all` starts, in start order (see `target`).
    pub const MONOLITH: [Component; 5] = [
        Component::StoreGateway,
        Component::Ingester,
        Component::Distributor,
        Component::Querier,
        Component::Compactor,
    ];

    pub const ALL: Target = Target { bits: 0b100_1111, all: true };

    /// Whether the process runs `c`.
    pub fn runs(self, c: Component) -> bool {
        self.bits & (1 << c as u16) != 0
    }

    /// Whether this is the monolith (every component of this version in one process).
    pub fn is_all(self) -> bool {
        self.bits == Target::ALL.bits
    }

    /// The components this target starts, in start order.
    pub fn components(self) -> Vec<Component> {
        Component::ALL.iter().copied().filter(|c| self.runs(*c)).collect()
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `all`, or a comma-separated list of component names.
    fn from_str(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(Target::ALL);
        }
        let mut bits = 0u16;
        for name in s.split(',').map(str::trim) {
            match name.parse::<Component>() {
                Ok(c) => bits |= 1 << c as u16,
                Err(_) => {
                    let known: Vec<&str> =
                        std::iter::once("all").chain(Component::ALL.iter().map(|c| c.as_str())).collect();
                    return Err(format!("-target: unknown component {name:?} (known: {})", known.join(", ")));
                }
            }
        }
        Ok(Target { bits, all: false })
    }
}

impl std::fmt::Display for Target {
    /// The components, in start order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.components().iter().map(|c| c.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.all {
            s.serialize_str("all")
        } else {
            s.serialize_str(&self.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("all".parse(), Ok(Target::ALL));
        assert_eq!("".parse(), Ok(Target::ALL));
        let spelled: Target = "querier, distributor,ingester,store-gateway,compactor".parse().unwrap();
        assert!(spelled.is_all() && spelled.components() == Target::MONOLITH);
        let i: Target = "ingester".parse().unwrap();
        assert!(i.runs(Component::Ingester) && !i.runs(Component::Distributor) && !i.is_all());
        assert_eq!(i.to_string(), "ingester");
        let dq: Target = "querier,distributor".parse().unwrap();
        assert_eq!(dq.components(), [Component::Distributor, Component::Querier]);
        let c: Target = "compactor".parse().unwrap();
        assert!(c.runs(Component::Compactor) && !c.runs(Component::Ingester));
        let fs: Target = "query-frontend,query-scheduler".parse().unwrap();
        assert!(fs.runs(Component::QueryFrontend) && fs.runs(Component::QueryScheduler) && !fs.is_all());
        let e = "ingestor".parse::<Target>().unwrap_err();
        assert!(e.contains("unknown component") && e.contains("store-gateway"), "{e}");
        assert_eq!(Target::ALL.to_string(), "store-gateway,ingester,distributor,querier,compactor");
        assert_eq!(serde_yaml::to_string(&Target::ALL).unwrap().trim(), "all");
    }

    #[test]
    fn modes_parse_and_show_as_given() {
        for p in WalSyncPolicy::ALL {
            assert_eq!(p.as_str().parse::<WalSyncPolicy>(), Ok(*p));
        }
        assert_eq!("s3".parse(), Ok(BackendKind::S3));
        let e = "swift".parse::<BackendKind>().unwrap_err();
        assert_eq!(e, "expected filesystem, s3, gcs or azure");
        assert_eq!("x".parse::<WalSyncPolicy>().unwrap_err(), "expected fsync or write");
        assert_eq!(serde_yaml::to_string(&LogLevel::Warn).unwrap().trim(), "warn");
    }
}
