//! # minetd
//!
//! The classic small services — echo (RFC 862), daytime (RFC 867), discard
//! (RFC 863), chargen (RFC 864) and time (RFC 868), over TCP and, when asked
//! for, UDP — served from **one thread**: a single `mio::Poll` loop that keeps every
//! accepted `TcpStream` in a `slab::Slab`, each with its own buffer of bytes
//! still owed to its peer.
//!
//! The parts:
//! - [`config`]: what to serve and within which limits ([`Config`]).
//! - [`server`]: the loop ([`Server`]), its listeners, deadlines and the
//!   [`ShutdownHandle`].
//! - [`listen`]: listening sockets the embedder already holds
//!   ([`HeldListener`]), for [`Server::bind_with`].
//! - [`conn`]: one peer's state machine ([`Connection`]), free of sockets so
//!   that tests can drive it with simulated streams.
//! - [`daytime`]: the daytime line in each format, and time's four bytes.
//! - [`chargen`]: the character generator's pattern.
//! - [`budget`]: the bytes held for all connections together, within
//!   `max_buffered` ([`Budget`]).
//! - [`proxy`]: the PROXY protocol header a trusted balancer sends first.
//! - [`stats`]: the counters the server keeps per service ([`Stats`]).
//!
//! The library starts no threads, installs no signal handlers and leaves
//! process limits to its embedder. Embedding it:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut server = minetd::Server::bind(&minetd::Config {
//!     echo: vec!["127.0.0.1:0".parse()?],
//!     ..Default::default()
//! })?;
//! let addrs = server.local_addrs(); // (Service, SocketAddr) per listener
//! let stop = server.shutdown_handle(); // Clone + Send
//! std::thread::spawn(move || stop.shutdown());
//! server.run()?; // returns after the shutdown; or call server.turn(timeout)
//! # assert_eq!(addrs.len(), 1);
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

pub mod budget;
pub mod chargen;
pub mod config;
pub mod conn;
pub mod daytime;
pub mod listen;
pub mod metrics;
pub mod proxy;
pub mod server;
pub mod stats;
mod sys;
mod udp;

pub use budget::Budget;
pub use config::{Cidr, Config, ConfigError, DaytimeFormat, Service};
pub use conn::{CloseReason, Connection};
pub use listen::{HeldListener, HeldProblem};
pub use server::{BindError, Server, ShutdownHandle, Turn};
pub use stats::{Counters, Refusals, Stats};
