//! afl target `escape`: see `fuzz/checks/escape.rs` for what it asserts.

#[path = "../../checks/escape.rs"]
mod check;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check::check(data);
    });
}
