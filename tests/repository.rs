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

/// The Markdown files a reader walks: the README and the pages under docs/.
fn markdown_pages(root: &Path) -> Vec<std::path::PathBuf> {
    let mut pages = vec![root.join("README.md")];
    let docs = std::fs::read_dir(root.join("docs")).expect("docs/ exists");
    for entry in docs {
        let path = entry.expect("docs entry").path();
        if path.extension().is_some_and(|ext| ext == "md") {
            pages.push(path);
        }
    }
    pages.sort();
    pages
}

/// The targets of inline links `[text](target)` in `text`, outside code.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        // Code spans may hold brackets that are not links.
        let outside_code: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = outside_code.as_str();
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            if let Some(end) = rest.find(')') {
                targets.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    targets
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-`
/// and `_` dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors_of(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut anchors = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        } else if !in_fence && line.starts_with('#') {
            anchors.push(anchor(line.trim_start_matches('#')));
        }
    }
    anchors
}

#[test]
fn every_relative_link_in_the_readme_and_docs_resolves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in markdown_pages(root) {
        let text = std::fs::read_to_string(&page).expect("read page");
        let dir = page.parent().expect("a page is in a directory");
        for target in link_targets(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (file, fragment) = match target.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (target.as_str(), None),
            };
            let path = if file.is_empty() {
                page.clone()
            } else {
                dir.join(file)
            };
            if !path.exists() {
                broken.push(format!("{}: {target}: no such file", page.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let linked = std::fs::read_to_string(&path).unwrap_or_default();
                if !anchors_of(&linked).iter().any(|a| a == fragment) {
                    broken.push(format!("{}: {target}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    // The README links to every page under docs/, so a test that checked
    // nothing would be a broken test.
    assert!(checked >= 7, "only {checked} relative links found");
}

#[test]
fn the_readme_links_to_every_page_under_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README");
    let targets = link_targets(&readme);
    let pages = markdown_pages(root);
    for page in pages
        .iter()
        .filter(|p| p.parent() == Some(&root.join("docs")))
    {
        let name = format!("docs/{}", page.file_name().expect("name").to_string_lossy());
        assert!(
            targets
                .iter()
                .any(|t| t.split('#').next() == Some(name.as_str())),
            "README.md does not link to {name}"
        );
    }
}

#[test]
fn anchors_follow_githubs_rule() {
    assert_eq!(anchor(" Measuring with `bench`"), "measuring-with-bench");
    assert_eq!(anchor(" Behind a load balancer"), "behind-a-load-balancer");
    assert_eq!(
        anchor(" The services, and what minetd chose"),
        "the-services-and-what-minetd-chose"
    );
}
