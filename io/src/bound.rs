//! A bound on a set of tasks: a fixed number of slots, one taken before a task starts and
//! given back when its `Slot` is dropped (however the task ends). Executor-agnostic (a
//! bounded flume channel underneath), so the cores (monoio) and the store thread (tokio)
//! share it.

/// `limit` slots; clones share them.
#[derive(Clone)]
pub struct Slots {
    tx: flume::Sender<()>,
    rx: flume::Receiver<()>,
}

/// One slot taken; given back on drop.
pub struct Slot {
    rx: flume::Receiver<()>,
}

impl Slots {
    /// At least one slot: a bound of 0 would stop everything.
    pub fn new(limit: usize) -> Self {
        let (tx, rx) = flume::bounded(limit.max(1));
        Slots { tx, rx }
    }

    /// A slot if one is free now.
    pub fn try_take(&self) -> Option<Slot> {
        self.tx.try_send(()).ok().map(|()| Slot { rx: self.rx.clone() })
    }

    /// A slot, waiting (first come, first served) until one is free.
    pub async fn take(&self) -> Slot {
        // Cannot fail: `self` holds a receiver.
        let _ = self.tx.send_async(()).await;
        Slot { rx: self.rx.clone() }
    }

    /// Slots taken now.
    pub fn in_use(&self) -> usize {
        self.tx.len()
    }

    pub fn limit(&self) -> usize {
        self.tx.capacity().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = self.rx.try_recv();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_up_to_the_limit_and_given_back_on_drop() {
        let s = Slots::new(2);
        let a = s.try_take().unwrap();
        let b = s.try_take().unwrap();
        assert!(s.try_take().is_none());
        assert_eq!((s.in_use(), s.limit()), (2, 2));
        drop(a);
        assert_eq!(s.in_use(), 1);
        let c = s.try_take().unwrap();
        drop((b, c));
        assert_eq!(s.in_use(), 0);
        assert_eq!(Slots::new(0).limit(), 1);
    }

    #[test]
    fn a_waiting_take_gets_the_slot_given_back() {
        let s = Slots::new(1);
        let held = s.try_take().unwrap();
        let s2 = s.clone();
        let waiter = std::thread::spawn(move || {
            let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new().build().unwrap();
            rt.block_on(async move { drop(s2.take().await) });
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished());
        drop(held);
        waiter.join().unwrap();
        assert_eq!(s.in_use(), 0);
    }
}
