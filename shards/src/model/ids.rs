//! The identifiers that cross components: a tenant, a profile type, a block. Each is a
//! newtype, so one cannot be passed where another is meant, and each is checked once where
//! it enters kiln (`parse`); inside kiln it is cheap to clone and reads as a `&str`.
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// Why a string is not a valid identifier of its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("tenant ID {0:?} is not valid")]
    Tenant(String),
    #[error("profile-type selection must be of the form <name>:<sample_type>:<sample_unit>:<period_type>:<period_unit>, got {0:?}")]
    ProfileType(String),
    #[error("block ID {0:?} is not a ULID")]
    Block(String),
}

/// Implements the `&str` views every ID shares.
macro_rules! str_id {
    ($name:ident) => {
        impl Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                &*self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &*self.0 == other.as_str()
            }
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A tenant (Pyroscope's org ID, `X-Scope-OrgID`): 1 to 150 of `[A-Za-z0-9!-_.*'()]`, not
/// `.` or `..`, as Pyroscope's `tenant.ValidTenantID` allows.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(Arc<str>);
str_id!(TenantId);

impl TenantId {
    /// The tenant of every request when multitenancy is off.
    pub const ANONYMOUS: &'static str = "anonymous";

    /// A tenant ID as a client sent it: refused unless valid.
    pub fn parse(s: &str) -> Result<TenantId, InvalidId> {
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "!-_.*'()".contains(c);
        if s.is_empty() || s.len() > 150 || s == "." || s == ".." || !s.chars().all(ok_char) {
            return Err(InvalidId::Tenant(s.to_string()));
        }
        Ok(TenantId(Arc::from(s)))
    }

    /// A tenant ID kiln wrote itself (WAL records, bucket paths, tests): checked when it first
    /// entered kiln, so taken as it is.
    pub fn known(s: impl Into<Arc<str>>) -> TenantId {
        TenantId(s.into())
    }

    /// Shared, not allocated per request: every request of a single-tenant kiln asks for it.
    pub fn anonymous() -> TenantId {
        static ANONYMOUS: std::sync::OnceLock<TenantId> = std::sync::OnceLock::new();
        ANONYMOUS.get_or_init(|| TenantId::known(Self::ANONYMOUS)).clone()
    }

    /// The shared string, for maps keyed by `Arc<str>`.
    pub fn to_arc(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl From<&str> for TenantId {
    /// As `known`: for IDs kiln wrote itself.
    fn from(s: &str) -> Self {
        TenantId::known(s)
    }
}

/// A profile type, `<name>:<sample_type>:<sample_unit>:<period_type>:<period_unit>` (a
/// sixth `:`-part is accepted and kept, as Pyroscope does).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileTypeId(Arc<str>);
str_id!(ProfileTypeId);

impl ProfileTypeId {
    pub fn parse(s: &str) -> Result<ProfileTypeId, InvalidId> {
        let parts = s.split(':').count();
        if parts != 5 && parts != 6 {
            return Err(InvalidId::ProfileType(s.to_string()));
        }
        Ok(ProfileTypeId(Arc::from(s)))
    }
}

impl From<&str> for ProfileTypeId {
    /// For profile types kiln wrote itself (series labels, tests): taken as they are.
    fn from(s: &str) -> Self {
        ProfileTypeId(Arc::from(s))
    }
}

/// A block: a ULID (26 characters of Crockford base32), also its folder in the bucket.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(Arc<str>);
str_id!(BlockId);

impl BlockId {
    /// A block ID read from a bucket index or a WAL marker: refused unless a ULID, so it
    /// can never name a path outside its tenant's folder.
    pub fn parse(s: &str) -> Result<BlockId, InvalidId> {
        if s.len() != 26 || !s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_uppercase()) {
            return Err(InvalidId::Block(s.to_string()));
        }
        Ok(BlockId(Arc::from(s)))
    }

    /// A fresh block ID.
    pub fn new_random() -> BlockId {
        BlockId(Arc::from(ulid::Ulid::new().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_checked_where_they_enter() {
        assert!(TenantId::parse("team-a_1.(x)").is_ok());
        for bad in ["", ".", "..", "a/b", "a|b", &"x".repeat(151)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(TenantId::parse("t").unwrap(), *"t");
        assert_eq!(TenantId::anonymous().as_str(), "anonymous");
    }

    #[test]
    fn profile_types_and_blocks() {
        assert!(ProfileTypeId::parse("process_cpu:cpu:nanoseconds:cpu:nanoseconds").is_ok());
        assert!(ProfileTypeId::parse("a:b:c:d:e:f").is_ok());
        assert!(ProfileTypeId::parse("cpu").is_err());
        let b = BlockId::new_random();
        assert_eq!(BlockId::parse(&b).unwrap(), b);
        assert!(BlockId::parse("../../etc/passwd0000000000").is_err());
    }
}
