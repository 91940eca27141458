//! Tenant settings: Pyroscope's `settings.v1.SettingsService` (`Get`, `Set`, `Delete`), the
//! key-value pairs Grafana's Profiles Drilldown app keeps per tenant (its plugin settings,
//! under the name `pluginSettings`).
//!
//! Each tenant's settings are one object in the bucket, `<tenant>/settings/settings.json`,
//! read on every `Get` and rewritten whole by every `Set` and `Delete` through
//! `Store::update` (a conditional write retried on a conflict, or a lock file on the
//! filesystem): they survive restarts, every instance of a cluster reads the same ones, and
//! two instances writing at once never lose each other's update. Pyroscope keeps one object
//! for every tenant; kiln one per tenant, so a tenant's write never rewrites another's.
//!
//! As in Pyroscope, a `Set` whose `modifiedAt` is older than the stored setting's is refused
//! (`already_exists`), and a missing `modifiedAt` is now. Each tenant holds at most
//! [`MAX_SETTINGS`] settings, each name at most [`MAX_NAME_BYTES`] and each value at most
//! [`MAX_VALUE_BYTES`]: past them a `Set` is refused (`invalid_argument`), so the object,
//! and what reading it costs, stays below [`MAX_OBJECT_BYTES`].
use crate::service::call::{Call, Reply};
use crate::service::routes::{Class, RpcService};
use crate::service::{tenant, Code, RpcError};
use crate::timeparse::now_ns;
use http::HeaderMap;
use kiln_io::store::{Edit, Store, StoreError};
use kiln_proto::settings::v1 as s;
use kiln_shards::model::ids::TenantId;
use std::collections::BTreeMap;

pub static RPC: &[RpcService] = &[RpcService { name: "settings.v1.SettingsService", class: Class::Other }];

/// Settings one tenant may hold.
pub const MAX_SETTINGS: usize = 64;
/// Bytes of a setting's name.
pub const MAX_NAME_BYTES: usize = 256;
/// Bytes of a setting's value (Drilldown's plugin settings are a few hundred).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The largest stored object the limits allow, with room for the JSON around them; a
/// stored object past it is refused as damaged rather than parsed.
pub const MAX_OBJECT_BYTES: usize = MAX_SETTINGS * (MAX_NAME_BYTES + MAX_VALUE_BYTES) * 7 + 4096;

/// One stored setting. The value is kept as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    pub value: String,
    /// Milliseconds since the epoch.
    pub modified_at: i64,
}

/// The object a tenant's settings live in.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SettingsFile {
    pub version: u32,
    pub settings: BTreeMap<String, Stored>,
}

impl SettingsFile {
    pub const VERSION: u32 = 1;

    pub fn path(tenant: &str) -> String {
        format!("{tenant}/settings/settings.json")
    }

    /// Parses a stored object, bounded by [`MAX_OBJECT_BYTES`] and the per-tenant limits.
    pub fn parse(bytes: &[u8]) -> Result<SettingsFile, String> {
        if bytes.len() > MAX_OBJECT_BYTES {
            return Err(format!("{} bytes, more than the {MAX_OBJECT_BYTES} the settings limits allow", bytes.len()));
        }
        let f: SettingsFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if f.version != Self::VERSION {
            return Err(format!("version {}, this kiln reads {}", f.version, Self::VERSION));
        }
        if f.settings.len() > MAX_SETTINGS {
            return Err(format!("{} settings, more than {MAX_SETTINGS}", f.settings.len()));
        }
        Ok(f)
    }

    fn to_bytes(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("settings serialize").into()
    }

    fn list(&self) -> Vec<s::Setting> {
        self.settings
            .iter()
            .map(|(name, v)| s::Setting { name: name.clone(), value: v.value.clone(), modified_at: v.modified_at })
            .collect()
    }

    /// Applies `set` as Pyroscope does: an older `modifiedAt` than the stored one is refused.
    pub fn set(&mut self, set: &s::Setting) -> Result<(), RpcError> {
        if let Some(old) = self.settings.get(&set.name) {
            if old.modified_at > set.modified_at {
                return Err(RpcError::new(
                    Code::AlreadyExists,
                    format!("failed to update {}: newer update already written", set.name),
                ));
            }
        } else if self.settings.len() >= MAX_SETTINGS {
            return Err(RpcError::invalid(format!(
                "a tenant holds at most {MAX_SETTINGS} settings; delete one before setting {:?}",
                set.name
            )));
        }
        self.settings.insert(set.name.clone(), Stored { value: set.value.clone(), modified_at: set.modified_at });
        Ok(())
    }
}

/// A `Set`'s setting checked against the limits, its `modifiedAt` defaulted to now.
fn checked(setting: Option<s::Setting>) -> Result<s::Setting, RpcError> {
    let Some(mut setting) = setting else {
        return Err(RpcError::invalid("no setting values provided"));
    };
    if setting.name.is_empty() {
        return Err(RpcError::invalid("a setting needs a name"));
    }
    if setting.name.len() > MAX_NAME_BYTES {
        return Err(RpcError::invalid(format!(
            "setting name is {} bytes, more than the limit of {MAX_NAME_BYTES}",
            setting.name.len()
        )));
    }
    if setting.value.len() > MAX_VALUE_BYTES {
        return Err(RpcError::invalid(format!(
            "setting {:?}'s value is {} bytes, more than the limit of {MAX_VALUE_BYTES}",
            setting.name,
            setting.value.len()
        )));
    }
    if setting.modified_at <= 0 {
        setting.modified_at = now_ns() / 1_000_000;
    }
    Ok(setting)
}

/// The tenant settings service on one core.
pub struct TenantSettings {
    store: Store,
    multitenancy: bool,
}

impl TenantSettings {
    pub fn new(store: Store, multitenancy: bool) -> Self {
        TenantSettings { store, multitenancy }
    }

    fn tenant(&self, headers: &HeaderMap) -> Result<TenantId, RpcError> {
        tenant::write_tenant(self.multitenancy, headers)
    }

    pub async fn serve_rpc(&self, call: &Call<'_>, method: &str) -> Reply {
        match method {
            "Get" => call.unary(|_: s::GetSettingsRequest| self.get(call.headers)).await,
            "Set" => call.unary(|r: s::SetSettingsRequest| self.set(call.headers, r)).await,
            "Delete" => call.unary(|r: s::DeleteSettingsRequest| self.delete(call.headers, r)).await,
            _ => call.unimplemented(),
        }
    }

    async fn get(&self, headers: &HeaderMap) -> Result<s::GetSettingsResponse, RpcError> {
        let tenant = self.tenant(headers)?;
        let path = SettingsFile::path(&tenant);
        let file = match self.store.get(path.clone()).await {
            Ok(bytes) => SettingsFile::parse(&bytes).map_err(|e| RpcError::internal(format!("{path}: {e}")))?,
            Err(StoreError::NotFound(_)) => SettingsFile::default(),
            Err(e) => return Err(RpcError::store("tenant settings", &e)),
        };
        Ok(s::GetSettingsResponse { settings: file.list() })
    }

    /// Applies `apply` to the tenant's stored settings and writes them back, unless it
    /// refuses (its error is the answer) or changes nothing.
    async fn update<T: Send + 'static>(
        &self,
        tenant: &str,
        apply: impl Fn(&mut SettingsFile) -> Result<Option<T>, RpcError> + Send + Sync + 'static,
    ) -> Result<Option<T>, RpcError> {
        let path = SettingsFile::path(tenant);
        let shown = path.clone();
        let outcome = self
            .store
            .update(path, move |stored| {
                let mut file = match stored {
                    Some(b) => SettingsFile::parse(b).map_err(|e| StoreError::Other(format!("{shown}: {e}")))?,
                    None => SettingsFile { version: SettingsFile::VERSION, ..Default::default() },
                };
                Ok(match apply(&mut file) {
                    Ok(Some(out)) => Edit::Write(file.to_bytes(), Ok(Some(out))),
                    other => Edit::Keep(other),
                })
            })
            .await
            .map_err(|e| RpcError::store("tenant settings", &e))?;
        outcome
    }

    async fn set(&self, headers: &HeaderMap, r: s::SetSettingsRequest) -> Result<s::SetSettingsResponse, RpcError> {
        let tenant = self.tenant(headers)?;
        let setting = checked(r.setting)?;
        let answer = setting.clone();
        self.update(&tenant, move |file| file.set(&setting).map(|()| Some(()))).await?;
        Ok(s::SetSettingsResponse { setting: Some(answer) })
    }

    async fn delete(
        &self,
        headers: &HeaderMap,
        r: s::DeleteSettingsRequest,
    ) -> Result<s::DeleteSettingsResponse, RpcError> {
        let tenant = self.tenant(headers)?;
        if r.name.is_empty() {
            return Err(RpcError::invalid("no setting name provided"));
        }
        let now_ms = now_ns() / 1_000_000;
        self.update(&tenant, move |file| match file.settings.get(&r.name) {
            None => Ok(None),
            Some(old) if old.modified_at > now_ms => Err(RpcError::new(
                Code::AlreadyExists,
                format!("failed to delete {}: newer update already written", r.name),
            )),
            Some(_) => {
                file.settings.remove(&r.name);
                Ok(Some(()))
            }
        })
        .await?;
        Ok(s::DeleteSettingsResponse {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(name: &str, value: &str, at: i64) -> s::Setting {
        s::Setting { name: name.into(), value: value.into(), modified_at: at }
    }

    #[test]
    fn newer_updates_win_and_older_ones_are_refused() {
        let mut f = SettingsFile { version: SettingsFile::VERSION, ..Default::default() };
        f.set(&setting("a", "1", 10)).unwrap();
        f.set(&setting("a", "2", 10)).unwrap();
        assert_eq!(f.settings["a"].value, "2", "an equal time replaces, as in Pyroscope");
        let e = f.set(&setting("a", "3", 9)).unwrap_err();
        assert_eq!(e.code, Code::AlreadyExists, "{e}");
        assert_eq!(f.settings["a"].value, "2");
        let back = SettingsFile::parse(&f.to_bytes()).unwrap();
        assert_eq!(back, f);
        assert_eq!(back.list(), vec![setting("a", "2", 10)]);
    }

    #[test]
    fn limits_are_refused_with_invalid_argument() {
        let mut f = SettingsFile { version: SettingsFile::VERSION, ..Default::default() };
        for i in 0..MAX_SETTINGS {
            f.set(&setting(&format!("s{i}"), "v", 1)).unwrap();
        }
        assert_eq!(f.set(&setting("one-more", "v", 1)).unwrap_err().code, Code::InvalidArgument);
        f.set(&setting("s0", "replaced", 2)).unwrap();
        let big = "x".repeat(MAX_VALUE_BYTES + 1);
        assert_eq!(checked(Some(setting("a", &big, 1))).unwrap_err().code, Code::InvalidArgument);
        let long = "n".repeat(MAX_NAME_BYTES + 1);
        assert_eq!(checked(Some(setting(&long, "v", 1))).unwrap_err().code, Code::InvalidArgument);
        assert!(checked(None).is_err() && checked(Some(setting("", "v", 1))).is_err());
        assert!(checked(Some(setting("a", "v", 0))).unwrap().modified_at > 1_600_000_000_000);
        // The fullest file the limits allow parses: the object bound holds it.
        let mut full = SettingsFile { version: SettingsFile::VERSION, ..Default::default() };
        for i in 0..MAX_SETTINGS {
            let name = format!("{i:0>width$}", width = MAX_NAME_BYTES);
            full.set(&setting(&name, &"\"".repeat(MAX_VALUE_BYTES), i64::MAX)).unwrap();
        }
        assert!(SettingsFile::parse(&full.to_bytes()).is_ok());
    }

    #[test]
    fn damaged_objects_are_refused() {
        assert!(SettingsFile::parse(b"{").is_err());
        assert!(SettingsFile::parse(br#"{"version":2,"settings":{}}"#).is_err());
        assert!(SettingsFile::parse(&vec![b' '; MAX_OBJECT_BYTES + 1]).is_err());
    }
}
