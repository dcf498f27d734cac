//! Counters the server keeps per service, for `--stats-interval` lines and
//! for embedders ([`Server::stats`](crate::Server::stats)).

use std::fmt;

use crate::config::Service;

/// One service's counters since the server started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Connections open now (always 0 for UDP services).
    pub open: usize,
    /// Connections accepted and served; for UDP, datagrams answered.
    pub accepted: u64,
    /// Connections closed at once (over a limit, or not allowed); for UDP,
    /// datagrams dropped.
    pub refused: u64,
    /// Bytes received from peers.
    pub bytes_in: u64,
    /// Bytes sent to peers.
    pub bytes_out: u64,
    /// Connections refused, by why (their sum is `refused`); TCP only.
    pub refused_by: Refusals,
    /// Datagrams received, whatever became of them; UDP only.
    pub datagrams_in: u64,
    /// Datagrams sent as answers; UDP only.
    pub datagrams_out: u64,
    /// Datagrams dropped: from outside `--allow`, from a port that could
    /// answer back, or an answer the socket would not take; UDP only.
    pub datagrams_dropped: u64,
}

/// Refused connections by reason, as the metrics label them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Refusals {
    /// At `--max-connections`.
    pub max_connections: u64,
    /// At `--per-source` for the peer's address.
    pub per_source: u64,
    /// Outside every `--allow` block.
    pub allow: u64,
    /// From a trusted balancer, without a whole valid PROXY header: a
    /// malformed one, none in time, or the connection ended before it.
    pub proxy_header: u64,
}

/// The counters of every service the server listens for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    by_service: [Counters; Service::ALL.len()],
    /// The services that have a listener, in [`Service::ALL`] order.
    served: Vec<Service>,
    /// Reads the memory budget deferred (see [`Stats::reads_held_back`]).
    pub(crate) reads_held_back: u64,
}

impl Stats {
    pub(crate) fn new(served: impl IntoIterator<Item = Service>) -> Stats {
        let mut served: Vec<Service> = served.into_iter().collect();
        served.sort();
        served.dedup();
        Stats {
            by_service: Default::default(),
            served,
            reads_held_back: 0,
        }
    }

    /// Reads the memory budget deferred since the server started: each
    /// time a connection would have read but the total could not cover what
    /// it might have to keep.
    pub fn reads_held_back(&self) -> u64 {
        self.reads_held_back
    }

    /// The counters of `service` (all zero if it is not served).
    pub fn get(&self, service: Service) -> Counters {
        self.by_service[service.index()]
    }

    pub(crate) fn get_mut(&mut self, service: Service) -> &mut Counters {
        &mut self.by_service[service.index()]
    }

    /// Each served service with its counters.
    pub fn iter(&self) -> impl Iterator<Item = (Service, Counters)> + '_ {
        self.served
            .iter()
            .map(|&service| (service, self.get(service)))
    }

    /// All services added up.
    pub fn total(&self) -> Counters {
        self.by_service
            .iter()
            .fold(Counters::default(), |sum, c| Counters {
                open: sum.open + c.open,
                accepted: sum.accepted + c.accepted,
                refused: sum.refused + c.refused,
                bytes_in: sum.bytes_in + c.bytes_in,
                bytes_out: sum.bytes_out + c.bytes_out,
                refused_by: Refusals {
                    max_connections: sum.refused_by.max_connections + c.refused_by.max_connections,
                    per_source: sum.refused_by.per_source + c.refused_by.per_source,
                    allow: sum.refused_by.allow + c.refused_by.allow,
                    proxy_header: sum.refused_by.proxy_header + c.refused_by.proxy_header,
                },
                datagrams_in: sum.datagrams_in + c.datagrams_in,
                datagrams_out: sum.datagrams_out + c.datagrams_out,
                datagrams_dropped: sum.datagrams_dropped + c.datagrams_dropped,
            })
    }
}

/// `echo open 2 accepted 10 refused 1 in 640 out 640; daytime open 0 …`
impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, (service, c)) in self.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{service} open {} accepted {} refused {} in {} out {}",
                c.open, c.accepted, c.refused, c.bytes_in, c.bytes_out
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_served_services_in_order() {
        let mut stats = Stats::new([Service::Daytime, Service::Echo]);
        let echo = stats.get_mut(Service::Echo);
        echo.open = 2;
        echo.accepted = 10;
        echo.refused = 1;
        echo.bytes_in = 640;
        echo.bytes_out = 600;
        stats.get_mut(Service::Daytime).bytes_out = 26;
        assert_eq!(
            stats.to_string(),
            "echo open 2 accepted 10 refused 1 in 640 out 600; \
             daytime open 0 accepted 0 refused 0 in 0 out 26"
        );
        assert_eq!(stats.total().bytes_out, 626);
    }
}
