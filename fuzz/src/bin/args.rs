//! afl target `args`: see `fuzz/checks/args.rs` for what it asserts.

#[path = "../../checks/args.rs"]
mod check;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check::check(data);
    });
}
