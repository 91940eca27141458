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

/// What `-target` asks a process to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `all` (or the monolith's components spelled out): every component this version has,
    /// in one process.
    All,
}

impl Target {
    /// The components `all` starts, in start order (see `target`).
    pub const MONOLITH: [Component; 4] =
        [Component::StoreGateway, Component::Ingester, Component::Distributor, Component::Querier];

    /// The components this target starts, in start order.
    pub fn components(self) -> &'static [Component] {
        match self {
            Target::All => &Target::MONOLITH,
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;

    /// `all`, or a comma-separated list of component names. Only what this version runs is
    /// accepted; any other known name is refused with why.
    fn from_str(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() || s == "all" {
            return Ok(Target::All);
        }
        let mut asked = Vec::new();
        for name in s.split(',').map(str::trim) {
            match name.parse::<Component>() {
                Ok(c) => asked.push(c as u8),
                Err(_) => {
                    let known: Vec<&str> =
                        std::iter::once("all").chain(Component::ALL.iter().map(|c| c.as_str())).collect();
                    return Err(format!("-target: unknown component {name:?} (known: {})", known.join(", ")));
                }
            }
        }
        asked.sort_unstable();
        asked.dedup();
        // The monolith's components, with or without the store-gateway (which `all` runs in
        // any case: the ingesters' blocks are served where they are cut).
        let monolith: Vec<u8> = Target::MONOLITH.iter().map(|c| *c as u8).collect();
        let without_sg: Vec<u8> = monolith.iter().copied().filter(|c| *c != Component::StoreGateway as u8).collect();
        if asked == monolith || asked == without_sg {
            return Ok(Target::All);
        }
        Err(format!("-target={s}: only the monolithic -target=all runs in this version"))
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
        s.serialize_str(match self {
            Target::All => "all",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!("all".parse(), Ok(Target::All));
        assert_eq!("".parse(), Ok(Target::All));
        assert_eq!("querier, distributor,ingester,store-gateway".parse(), Ok(Target::All));
        assert_eq!("distributor,ingester,querier".parse(), Ok(Target::All));
        let e = "ingester".parse::<Target>().unwrap_err();
        assert!(e.contains("only the monolithic"), "{e}");
        let e = "ingestor".parse::<Target>().unwrap_err();
        assert!(e.contains("unknown component") && e.contains("store-gateway"), "{e}");
        assert_eq!(Target::All.to_string(), "store-gateway,ingester,distributor,querier");
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
