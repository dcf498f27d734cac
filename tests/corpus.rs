//! The fuzz targets' inputs as ordinary tests, no fuzzer needed: every
//! file under `fuzz/seeds/TARGET/` and the minimised campaign corpus
//! `fuzz/corpus/TARGET/` goes through the very checks the afl targets run
//! (`fuzz/checks/`), and each finding stays fixed as a named test below.
//! docs/fuzzing.md says how the corpus is made.

#[path = "../fuzz/checks/addr.rs"]
mod addr_check;
#[path = "../fuzz/checks/args.rs"]
mod args_check;
#[path = "../fuzz/checks/escape.rs"]
mod escape_check;
#[path = "../fuzz/checks/proxy.rs"]
mod proxy_check;

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Runs `check` on every seed and corpus file of `target`; fails naming
/// each file whose check panicked.
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut files: Vec<PathBuf> = Vec::new();
    for kind in ["seeds", "corpus"] {
        let dir = fuzz.join(kind).join(target);
        let entries = fs::read_dir(&dir).unwrap_or_else(|err| panic!("{}: {err}", dir.display()));
        files.extend(entries.map(|entry| entry.expect("directory entry").path()));
    }
    assert!(files.len() > 10, "{target}: only {} inputs", files.len());
    files.sort();
    let failed: Vec<String> = files
        .iter()
        .filter(|path| {
            let data = fs::read(path).expect("input file");
            panic::catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(failed.is_empty(), "{target}: failed on {failed:#?}");
}

#[test]
fn proxy_corpus_parses_alike_in_every_split() {
    replay("proxy", proxy_check::check);
}

#[test]
fn escape_corpus_unescapes_and_round_trips() {
    replay("escape", escape_check::check);
}

#[test]
fn addr_corpus_parses_and_shows_back() {
    replay("addr", addr_check::check);
}

#[test]
fn args_corpus_is_a_usage_error_or_a_checked_config() {
    replay("args", args_check::check);
}
