//! An instance's entry as it is gossiped: a handful of small keys in its own chitchat state,
//! never its tokens (a token seed stands for them: every member derives the same tokens from
//! it). Pure: encoding and decoding only.
use kiln_shards::ring::member::{Components, InstanceDesc, State};

pub const ADDR: &str = "addr";
pub const ZONE: &str = "zone";
pub const COMPONENTS: &str = "components";
pub const STATE: &str = "state";
pub const CORES: &str = "cores";
pub const SEED: &str = "seed";
/// The member's heartbeat: its clock (Unix ms) when it last published one. Receivers judge
/// health by when they saw it change, on their own clock, so clock skew does not matter.
pub const HEARTBEAT: &str = "hb";
/// `forget/<id>` = `<generation>`: the member who set it asks every member to drop `id`'s
/// generations up to that one.
pub const FORGET_PREFIX: &str = "forget/";

/// The token seed of an instance: derived from its ID, so a restarted instance takes the same
/// tokens again (Pyroscope keeps them in a tokens file for the same reason).
pub fn token_seed(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(id.as_bytes(), 0x746f_6b65_6e73)
}

/// This instance's keys.
pub fn own_keys(desc: &InstanceDesc) -> Vec<(String, String)> {
    vec![
        (ADDR.into(), desc.addr.clone()),
        (ZONE.into(), desc.zone.clone()),
        (COMPONENTS.into(), desc.components.to_string()),
        (STATE.into(), desc.state.as_str().into()),
        (CORES.into(), desc.cores.to_string()),
        (SEED.into(), format!("{:016x}", desc.token_seed)),
    ]
}

/// A member's entry from its keys, or why it is not one (a member of another version, or one
/// still publishing its first keys: it is left out until its entry is whole).
pub fn decode<'a>(id: &str, get: impl Fn(&str) -> Option<&'a str>) -> Result<InstanceDesc, String> {
    let need = |k: &str| get(k).ok_or_else(|| format!("member {id}: no {k:?} key"));
    let components: Components = need(COMPONENTS)?.parse().map_err(|e| format!("member {id}: {e}"))?;
    let state: State = need(STATE)?.parse().map_err(|e| format!("member {id}: {e}"))?;
    let cores: u32 = need(CORES)?.parse().map_err(|e| format!("member {id}: cores: {e}"))?;
    let token_seed = u64::from_str_radix(need(SEED)?, 16).map_err(|e| format!("member {id}: seed: {e}"))?;
    Ok(InstanceDesc {
        id: id.to_string(),
        addr: need(ADDR)?.to_string(),
        zone: get(ZONE).unwrap_or("").to_string(),
        components,
        state,
        cores,
        token_seed,
        heartbeat_ms: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn entry_roundtrips_and_incomplete_ones_are_refused() {
        let d = InstanceDesc {
            id: "a-4040".into(),
            addr: "127.0.0.1:4040".into(),
            zone: "z1".into(),
            components: "distributor,ingester".parse().unwrap(),
            state: State::Active,
            cores: 4,
            token_seed: token_seed("a-4040"),
            heartbeat_ms: 0,
        };
        let keys: HashMap<String, String> = own_keys(&d).into_iter().collect();
        let back = decode("a-4040", |k| keys.get(k).map(String::as_str)).unwrap();
        assert_eq!(back.addr, d.addr);
        assert_eq!(back.state, State::Active);
        assert_eq!(back.cores, 4);
        assert_eq!(back.token_seed, d.token_seed);
        assert_eq!(back.components.to_string(), d.components.to_string());
        let mut partial = keys.clone();
        partial.remove(SEED);
        let e = decode("a-4040", |k| partial.get(k).map(String::as_str)).unwrap_err();
        assert!(e.contains("seed"), "{e}");
        assert_ne!(token_seed("a-4040"), token_seed("a-4041"));
    }
}
