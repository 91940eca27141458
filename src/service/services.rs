//! The state of each service this process runs, for `/services` (Pyroscope's page, with
//! dskit's state names). `target::run` moves each one as it starts and stops it; the page
//! reads them. The services are the components `-target` runs, plus `server` (the edge: the
//! port on every core) and, in a cluster, `memberlist-kv` (gossip).
use std::sync::atomic::{AtomicU8, Ordering};

/// dskit's service states, in the order a service goes through them; stored as the
/// variant's index in `ALL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServiceState {
    New,
    Starting,
    Running,
    Stopping,
    Terminated,
}

const _: () = {
    let mut i = 0;
    while i < ServiceState::ALL.len() {
        assert!(ServiceState::ALL[i] as usize == i, "ALL lists the states in discriminant order");
        i += 1;
    }
};

impl ServiceState {
    const ALL: [ServiceState; 5] = [Self::New, Self::Starting, Self::Running, Self::Stopping, Self::Terminated];

    pub fn as_str(self) -> &'static str {
        match self {
            ServiceState::New => "New",
            ServiceState::Starting => "Starting",
            ServiceState::Running => "Running",
            ServiceState::Stopping => "Stopping",
            ServiceState::Terminated => "Terminated",
        }
    }
}

/// The process's services, in start order, each with its state.
pub struct Services {
    rows: Vec<(&'static str, AtomicU8)>,
}

impl Services {
    /// Every service `New`.
    pub fn new(names: &[&'static str]) -> Self {
        debug_assert!(!names.is_empty(), "a process runs at least its server");
        Services { rows: names.iter().map(|n| (*n, AtomicU8::new(ServiceState::New as u8))).collect() }
    }

    /// Moves service `name` to `state`; a name this process does not run is ignored (the
    /// start code names components whether or not the target runs them).
    pub fn set(&self, name: &str, state: ServiceState) {
        if let Some((_, s)) = self.rows.iter().find(|(n, _)| *n == name) {
            s.store(state as u8, Ordering::Release);
        }
    }

    /// Moves every service in state `from` to `to` (shutdown: Running → Stopping).
    pub fn move_all(&self, from: ServiceState, to: ServiceState) {
        for (_, s) in &self.rows {
            let _ = s.compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Each service with its state, in start order.
    pub fn states(&self) -> Vec<(&'static str, ServiceState)> {
        self.rows
            .iter()
            .map(|(n, s)| {
                let v = s.load(Ordering::Acquire);
                (*n, ServiceState::ALL[usize::from(v)])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{ServiceState, Services};

    #[test]
    fn test_services_move_one_at_a_time_and_all_at_shutdown() {
        let s = Services::new(&["server", "ingester", "compactor"]);
        assert!(s.states().iter().all(|(_, st)| *st == ServiceState::New));
        s.set("ingester", ServiceState::Starting);
        s.set("querier", ServiceState::Running);
        s.set("server", ServiceState::Running);
        assert_eq!(
            s.states(),
            [("server", ServiceState::Running), ("ingester", ServiceState::Starting), ("compactor", ServiceState::New)]
        );
        s.move_all(ServiceState::Running, ServiceState::Stopping);
        assert_eq!(s.states()[0], ("server", ServiceState::Stopping));
        assert_eq!(s.states()[1], ("ingester", ServiceState::Starting));
    }
}
