//! Netfilter-style hook points (SPEC B.1): PRE_ROUTING runs on every IP
//! datagram that passed the header checks, before the "is it ours" routing
//! decision; LOCAL_IN runs on datagrams about to be delivered locally, after
//! reassembly. A filter answers accept or drop; a drop is counted under
//! `filter_pre_routing` / `filter_local_in`.

/// Where in the receive path a filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    PreRouting,
    LocalIn,
}

/// A filter's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
}

/// A packet filter. `packet` is the IP datagram from its header (IPv4 or
/// IPv6: look at the version nibble).
pub trait PacketFilter: Send {
    fn filter(&mut self, hook: HookPoint, packet: &[u8]) -> Verdict;
}

/// The registered filters, run in order; the first drop wins.
#[derive(Default)]
pub struct Filters {
    list: Vec<Box<dyn PacketFilter>>,
}

impl Filters {
    pub fn push(&mut self, f: Box<dyn PacketFilter>) {
        self.list.push(f);
    }

    /// Run every filter at `hook` (free when none is registered).
    #[inline]
    pub fn run(&mut self, hook: HookPoint, packet: &[u8]) -> Verdict {
        if self.list.is_empty() {
            return Verdict::Accept;
        }
        for f in &mut self.list {
            if f.filter(hook, packet) == Verdict::Drop {
                return Verdict::Drop;
            }
        }
        Verdict::Accept
    }
}

impl<F: FnMut(HookPoint, &[u8]) -> Verdict + Send> PacketFilter for F {
    fn filter(&mut self, hook: HookPoint, packet: &[u8]) -> Verdict {
        self(hook, packet)
    }
}
