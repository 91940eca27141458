//! Label sets: the identity of a series.
//!
//! A `Labels` is always sorted by name with unique names, so equal sets compare equal and
//! hash the same whatever order a client sent them in.
use xxhash_rust::xxh3::Xxh3;

pub const NAME: &str = "__name__";
pub const SERVICE_NAME: &str = "service_name";
pub const PROFILE_TYPE: &str = "__profile_type__";
pub const TYPE: &str = "__type__";
pub const UNIT: &str = "__unit__";
pub const PERIOD_TYPE: &str = "__period_type__";
pub const PERIOD_UNIT: &str = "__period_unit__";
pub const SERVICE_NAME_PRIVATE: &str = "__service_name__";
pub const DELTA: &str = "__delta__";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Labels(Vec<(String, String)>);

impl Labels {
    /// Builds a set from pairs in any order; a later duplicate name replaces an earlier one.
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut v: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        // Keep the last of equal names: dedup_by keeps the first, so reverse around it.
        v.reverse();
        v.dedup_by(|a, b| a.0 == b.0);
        v.reverse();
        Labels(v)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)).ok().map(|i| self.0[i].1.as_str())
    }

    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => self.0[i].1 = value.into(),
            Err(i) => self.0.insert(i, (name.to_string(), value.into())),
        }
    }

    pub fn remove(&mut self, name: &str) -> Option<String> {
        match self.0.binary_search_by(|(k, _)| k.as_str().cmp(name)) {
            Ok(i) => Some(self.0.remove(i).1),
            Err(_) => None,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.0
    }

    /// A 64-bit fingerprint of (tenant, labels); names and values are separated by bytes that
    /// cannot occur in UTF-8 so that no two different sets share an encoding.
    pub fn fingerprint(&self, tenant: &str) -> u64 {
        let mut h = Xxh3::new();
        h.update(tenant.as_bytes());
        h.update(&[0xff]);
        for (k, v) in &self.0 {
            h.update(k.as_bytes());
            h.update(&[0xfe]);
            h.update(v.as_bytes());
            h.update(&[0xff]);
        }
        h.digest()
    }
}

/// The Prometheus-style rendering `{a="b", c="d"}` used in logs and error messages.
impl std::fmt::Display for Labels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("{")?;
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{k}={v:?}")?;
        }
        f.write_str("}")
    }
}

/// `name:sample_type:sample_unit:period_type:period_unit`, the identity of a profile type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProfileType {
    pub name: String,
    pub sample_type: String,
    pub sample_unit: String,
    pub period_type: String,
    pub period_unit: String,
}

impl ProfileType {
    pub fn id(&self) -> String {
        format!("{}:{}:{}:{}:{}", self.name, self.sample_type, self.sample_unit, self.period_type, self.period_unit)
    }

    /// Parses an ID of exactly five `:`-separated parts (a sixth is tolerated and ignored, as
    /// Pyroscope does).
    pub fn parse(id: &str) -> Result<Self, String> {
        let parts: Vec<&str> = id.split(':').collect();
        if parts.len() != 5 && parts.len() != 6 {
            return Err(format!("profile-type selection must be of the form <name>:<sample_type>:<sample_unit>:<period_type>:<period_unit>, got {id:?}"));
        }
        Ok(ProfileType {
            name: parts[0].into(),
            sample_type: parts[1].into(),
            sample_unit: parts[2].into(),
            period_type: parts[3].into(),
            period_unit: parts[4].into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_and_deduplicated() {
        let l = Labels::from_pairs([("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![("a", "2"), ("b", "3")]);
        assert_eq!(l.get("b"), Some("3"));
        assert_eq!(l.get("c"), None);
    }

    #[test]
    fn fingerprint_is_order_independent_and_tenant_scoped() {
        let a = Labels::from_pairs([("x", "1"), ("y", "2")]);
        let b = Labels::from_pairs([("y", "2"), ("x", "1")]);
        assert_eq!(a.fingerprint("t"), b.fingerprint("t"));
        assert_ne!(a.fingerprint("t"), a.fingerprint("u"));
        let c = Labels::from_pairs([("x", "1y"), ("", "2")]);
        assert_ne!(a.fingerprint("t"), c.fingerprint("t"));
    }

    #[test]
    fn profile_type_ids() {
        let p = ProfileType::parse("memory:samples:bytes::").unwrap();
        assert_eq!(p.sample_unit, "bytes");
        assert_eq!(p.id(), "memory:samples:bytes::");
        assert!(ProfileType::parse("a:b:c").is_err());
        assert!(ProfileType::parse("a:b:c:d:e:f").is_ok());
    }
}
