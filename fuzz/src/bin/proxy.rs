//! afl target `proxy`: see `fuzz/checks/proxy.rs` for what it asserts.

#[path = "../../checks/proxy.rs"]
mod check;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check::check(data);
    });
}
