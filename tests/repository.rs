//! The repository documents itself: no tracked file points a reader at
//! notes outside it (a sibling folder, or planning files a clone does not
//! have). Code comments cite upstream sources; the README and the manual
//! pages carry the rest.

use std::path::Path;
use std::process::Command;

/// What a reference to something outside the repository looks like. Each is
/// assembled at run time so that this file does not match itself.
fn outside_references() -> Vec<String> {
    vec![
        ["..", "/shared"].concat(),
        ["/work", "/"].concat(),
        ["SPEC", ".md"].concat(),
        ["STYLE", ".md"].concat(),
        ["PIT", "FALLS"].concat(),
        ["shared", " folder"].concat(),
    ]
}

#[test]
fn no_tracked_file_refers_outside_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root)
        .output();
    let files = match listed {
        Ok(output) if output.status.success() => output.stdout,
        _ => {
            eprintln!("skipped: not a git work tree, so there is no list of tracked files");
            return;
        }
    };
    let needles = outside_references();
    let mut found = Vec::new();
    for name in files.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        // Binary files and files deleted in the work tree say nothing.
        let Ok(text) = std::fs::read_to_string(root.join(&name)) else {
            continue;
        };
        for (number, line) in text.lines().enumerate() {
            for needle in &needles {
                if line.to_lowercase().contains(&needle.to_lowercase()) {
                    found.push(format!("{name}:{}: {}", number + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "references outside the repository:\n{}",
        found.join("\n")
    );
}
