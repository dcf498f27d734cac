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
}

/// The counters of every service the server listens for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    by_service: [Counters; Service::ALL.len()],
    /// The services that have a listener, in [`Service::ALL`] order.
    served: Vec<Service>,
}

impl Stats {
    pub(crate) fn new(served: impl IntoIterator<Item = Service>) -> Stats {
        let mut served: Vec<Service> = served.into_iter().collect();
        served.sort();
        served.dedup();
        Stats {
            by_service: Default::default(),
            served,
        }
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
