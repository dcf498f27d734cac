//! `--generate KIND` for both binaries: the manual page renders without a
//! warning and names every option `--help` lists (every command's, for the
//! client) and the sections beyond it; each completion script passes its
//! shell's syntax check; an unknown KIND is one line and exit 2.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{STEP, client_bin, output_within, server_bin};

fn run(bin: &Path, args: &[&str]) -> Output {
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    output_within(child, STEP)
}

fn generated(bin: &Path, kind: &str) -> Vec<u8> {
    let output = run(bin, &["--generate", kind]);
    assert_eq!(output.status.code(), Some(0), "{kind}: {output:?}");
    assert!(output.stderr.is_empty(), "{kind}: {output:?}");
    assert!(!output.stdout.is_empty(), "{kind}: empty");
    output.stdout
}

/// Every `--long` option named in `text`.
fn long_options(text: &str) -> Vec<String> {
    let mut found: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.starts_with("--") && word.len() > 2)
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    found
}

/// Renders roff as plain text with groff, failing on any warning.
fn render(page: &[u8]) -> String {
    let mut child = Command::new("groff")
        // No hyphenation and long lines: options stay whole words.
        .args(["-man", "-Tascii", "-ww", "-rHY=0", "-rLL=250n", "-P-cbou"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("groff (package groff-base; .ci/run installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(page)
        .expect("feed groff");
    let output = output_within(child, STEP);
    assert!(output.status.success(), "groff failed: {output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "",
        "groff warnings"
    );
    String::from_utf8(output.stdout).expect("ascii text")
}

fn help(bin: &Path, args: &[&str]) -> String {
    let output = run(bin, args);
    assert_eq!(output.status.code(), Some(0));
    String::from_utf8(output.stdout).expect("help text")
}

fn assert_names_all(page: &str, options: &[String], what: &str) {
    let named = long_options(page);
    let missing: Vec<&String> = options.iter().filter(|o| !named.contains(o)).collect();
    assert!(missing.is_empty(), "{what}: the man page lacks {missing:?}");
}

#[test]
fn server_man_page_renders_and_names_every_option() {
    let page = render(&generated(server_bin(), "man"));
    let options = long_options(&help(server_bin(), &["--help"]));
    assert!(options.len() >= 20, "{options:?}");
    assert!(options.contains(&"--generate".to_string()));
    assert_names_all(&page, &options, "minetd");
    assert!(page.starts_with("minetd(8)"), "{}", &page[..40]);
    for needle in [
        "EXIT STATUS",
        "SIGNALS",
        "ENVIRONMENT",
        "RUST_LOG",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "READY=1",
        "listening echo 127.0.0.1:41234",
        "stats: echo open",
        "loopback only unless --allow",
    ] {
        assert!(page.contains(needle), "minetd(8) lacks {needle:?}");
    }
}

#[test]
fn client_man_page_renders_and_names_every_commands_options() {
    let page = render(&generated(client_bin(), "man"));
    assert!(page.starts_with("minetd-client(1)"), "{}", &page[..40]);
    let top = help(client_bin(), &["--help"]);
    assert_names_all(&page, &long_options(&top), "minetd-client");
    // The commands are the indented first words under "Commands:".
    let commands: Vec<&str> = top
        .lines()
        .skip_while(|line| !line.starts_with("Commands:"))
        .skip(1)
        .take_while(|line| line.starts_with("  "))
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != "help")
        .collect();
    assert!(commands.contains(&"bench"), "{commands:?}");
    for command in commands {
        let options = long_options(&help(client_bin(), &[command, "--help"]));
        assert_names_all(&page, &options, command);
        let heading = format!("MINETD-CLIENT {}", command.to_uppercase());
        assert!(page.contains(&heading), "no section {heading}");
    }
    for needle in ["EXIT STATUS", "cannot connect to", "SEE ALSO"] {
        assert!(page.contains(needle), "minetd-client(1) lacks {needle:?}");
    }
}

/// Checks `script` with `shell`'s no-execute mode; skips (saying so) when
/// the shell is not installed.
fn syntax_check(shell: &str, flag: &str, script: &[u8], what: &str) {
    let Ok(mut child) = Command::new(shell)
        .arg(flag)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        eprintln!("skipped: {shell} is not installed, so {what} is not checked");
        return;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script)
        .expect("feed the shell");
    let output = output_within(child, STEP);
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{shell} rejects {what}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn completion_scripts_pass_their_shells_syntax_check() {
    for bin in [server_bin(), client_bin()] {
        let name = bin.file_name().unwrap().to_string_lossy().into_owned();
        let bash = generated(bin, "complete-bash");
        assert!(
            String::from_utf8_lossy(&bash)
                .contains(&format!("complete -F _{}", name.replace('-', "__"))),
            "{name}: bash script registers no completion"
        );
        syntax_check("bash", "-n", &bash, &format!("{name}'s bash completion"));
        let zsh = generated(bin, "complete-zsh");
        assert!(zsh.starts_with(format!("#compdef {name}").as_bytes()));
        syntax_check("zsh", "-n", &zsh, &format!("{name}'s zsh completion"));
        let fish = generated(bin, "complete-fish");
        assert!(String::from_utf8_lossy(&fish).contains(&format!("complete -c {name}")));
        syntax_check(
            "fish",
            "--no-execute",
            &fish,
            &format!("{name}'s fish completion"),
        );
    }
}

#[test]
fn an_unknown_kind_is_one_line_and_exit_2() {
    for (bin, prefix) in [
        (server_bin(), "minetd: "),
        (client_bin(), "minetd-client: "),
    ] {
        let output = run(bin, &["--generate", "manual"]);
        assert_eq!(output.status.code(), Some(2));
        assert!(output.stdout.is_empty());
        let stderr = String::from_utf8(output.stderr).expect("text");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.starts_with(prefix) && stderr.contains("'manual'"),
            "{stderr}"
        );
    }
}

#[test]
fn man_shows_both_pages_without_warnings() {
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("skipped: man is not installed (package man-db; .ci/run installs it)");
        return;
    }
    for (bin, title) in [
        (server_bin(), "minetd(8)"),
        (client_bin(), "minetd-client(1)"),
    ] {
        let path = std::env::temp_dir().join(format!(
            "minetd-page-{}-{}",
            std::process::id(),
            title.replace(['(', ')'], "")
        ));
        std::fs::write(&path, generated(bin, "man")).expect("write the page");
        let child = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(&path)
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("man");
        let output = output_within(child, STEP);
        let _ = std::fs::remove_file(&path);
        assert!(output.status.success(), "{title}: {output:?}");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "", "{title}");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.trim_start().starts_with(title),
            "{title}: {}",
            &text[..80.min(text.len())]
        );
    }
}
