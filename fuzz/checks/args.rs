//! What the `args` target asserts of the server's command line
//! (`src/bin/minetd/args.rs`): any argument list is a usage error, help or
//! version, or a configuration built as `main` builds it that validates or
//! is refused with a message. Shared by the afl target and the corpus test
//! (`tests/corpus.rs`). Input: the arguments after `minetd`, separated by
//! NUL bytes.

#[path = "../../src/bin/minetd/args.rs"]
mod args;
#[path = "../../src/bin/common/generate.rs"]
#[allow(dead_code)] // printing the manual page is not parsing
mod generate;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use clap::FromArgMatches;

/// Panics if parsing `data` as arguments breaks a property.
pub fn check(data: &[u8]) {
    let argv = std::iter::once(OsString::from("minetd")).chain(
        data.split(|&byte| byte == 0)
            .map(|arg| OsString::from_vec(arg.to_vec())),
    );
    let matches = match args::command().try_get_matches_from(argv) {
        Ok(matches) => matches,
        Err(err) => {
            // main prints its first line, or all of help and version.
            let text = err.to_string();
            assert!(!text.is_empty());
            return;
        }
    };
    if generate::requested(&matches).is_some() {
        return;
    }
    let parsed = args::Args::from_arg_matches(&matches).expect("clap's own matches");
    let listeners = args::listeners_in_option_order(&parsed, &matches, true);
    // Every address given is served, in order, or the defaults if none.
    let given = [
        &parsed.echo,
        &parsed.daytime,
        &parsed.discard,
        &parsed.chargen,
        &parsed.time,
        &parsed.udp_echo,
        &parsed.udp_discard,
        &parsed.udp_daytime,
        &parsed.udp_chargen,
        &parsed.udp_time,
    ]
    .iter()
    .map(|addrs| addrs.len())
    .sum::<usize>();
    assert_eq!(listeners.len(), if given == 0 { 2 } else { given });
    let config = args::config(&parsed, &listeners);
    assert_eq!(config.listeners().count(), listeners.len());
    match config.validate() {
        Ok(()) => {
            assert!(config.max_buffered >= config.max_pending);
            assert!(config.max_pending >= 1 && config.max_connections >= 1);
        }
        Err(err) => assert!(!err.to_string().is_empty()),
    }
}
