//! afl target `addr`: see `fuzz/checks/addr.rs` for what it asserts.

#[path = "../../checks/addr.rs"]
mod check;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check::check(data);
    });
}
