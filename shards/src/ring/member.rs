//! One instance's ring entry: its lifecycle state, the components it runs, and what its tokens
//! are derived from. Pure: health is judged by a snapshot against a `now_ms` the caller passes.
use std::fmt;
use std::str::FromStr;

/// dskit's instance states. UNHEALTHY is not a state: it is derived from heartbeat age.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum State {
    /// Registered, no tokens yet: owns nothing.
    Pending,
    /// Tokens claimed, not yet taking writes: writes extend past it.
    Joining,
    /// Owns its tokens, takes writes and reads.
    Active,
    /// Shutting down and flushing: holds its tokens, writes extend past it.
    Leaving,
    /// Gone: a tombstone, so gossip does not bring the entry back; no snapshot shows it.
    Left,
}

impl State {
    pub const ALL: [State; 5] = [State::Pending, State::Joining, State::Active, State::Leaving, State::Left];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Joining => "JOINING",
            State::Active => "ACTIVE",
            State::Leaving => "LEAVING",
            State::Left => "LEFT",
        }
    }

    /// Whether members in this state hold tokens in a ring (dskit: PENDING has none yet, LEFT
    /// has given them up).
    pub fn holds_tokens(self) -> bool {
        matches!(self, State::Joining | State::Active | State::Leaving)
    }

    /// The lifecycle's allowed changes (dskit `lifecycler.changeState`, plus what its restart
    /// and unregister paths do). Staying in a state is always allowed.
    /// - PENDING→JOINING, PENDING→ACTIVE, JOINING→PENDING, JOINING→ACTIVE, ACTIVE→LEAVING:
    ///   dskit's `changeState` table.
    /// - LEAVING→ACTIVE: a restart that finds its own entry LEAVING with tokens takes it back.
    /// - PENDING, JOINING, LEAVING → LEFT: unregistering on shutdown; ACTIVE leaves through
    ///   LEAVING, so it flushes before its tokens go.
    /// - LEFT→PENDING: the same id registering again (a new generation after a leave).
    pub fn can_become(self, next: State) -> bool {
        use State::*;
        self == next
            || matches!(
                (self, next),
                (Pending, Joining)
                    | (Pending, Active)
                    | (Joining, Pending)
                    | (Joining, Active)
                    | (Active, Leaving)
                    | (Leaving, Active)
                    | (Pending | Joining | Leaving, Left)
                    | (Left, Pending)
            )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {got:?}")]
pub struct ParseError {
    what: &'static str,
    got: String,
}

impl FromStr for State {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ParseError { what: "state", got: s.to_string() })
    }
}

/// The components an instance runs, as bits (its `-target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Components(pub u8);

impl Components {
    pub const DISTRIBUTOR: u8 = 1 << 0;
    pub const INGESTER: u8 = 1 << 1;
    pub const QUERIER: u8 = 1 << 2;
    pub const STORE_GATEWAY: u8 = 1 << 3;
    pub const QUERY_FRONTEND: u8 = 1 << 4;
    pub const QUERY_SCHEDULER: u8 = 1 << 5;
    pub const COMPACTOR: u8 = 1 << 6;

    /// Each bit with its `-target` name, in bit order (Display's order).
    pub const NAMES: [(u8, &'static str); 7] = [
        (Self::DISTRIBUTOR, "distributor"),
        (Self::INGESTER, "ingester"),
        (Self::QUERIER, "querier"),
        (Self::STORE_GATEWAY, "store-gateway"),
        (Self::QUERY_FRONTEND, "query-frontend"),
        (Self::QUERY_SCHEDULER, "query-scheduler"),
        (Self::COMPACTOR, "compactor"),
    ];

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A comma list of `-target` names, in bit order; no components is the empty string.
impl fmt::Display for Components {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (bit, name) in Self::NAMES {
            if self.has(bit) {
                if !first {
                    f.write_str(",")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

/// Display's comma list back (any order, repeats allowed; the empty string is none).
impl FromStr for Components {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, ParseError> {
        let mut bits = 0;
        for name in s.split(',').filter(|n| !n.is_empty()) {
            let (bit, _) = Self::NAMES
                .into_iter()
                .find(|(_, n)| *n == name)
                .ok_or_else(|| ParseError { what: "component", got: name.to_string() })?;
            bits |= bit;
        }
        Ok(Components(bits))
    }
}

/// One instance as the membership knows it. A snapshot numbers instances by their position
/// after sorting by `id`; that index is what ring members carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceDesc {
    pub id: String,
    /// host:port of its HTTP server (internal RPC runs there too).
    pub addr: String,
    pub zone: String,
    pub components: Components,
    pub state: State,
    pub cores: u32,
    /// All its tokens derive from this and `cores` (see `Ring::of_instances`); kept across
    /// restarts, so a restarted instance owns what it owned.
    pub token_seed: u64,
    /// When this node last saw the member's heartbeat advance, on this node's clock: health is
    /// judged against the local clock only, never against another node's.
    pub heartbeat_ms: u64,
}
