//! The systemd units in `contrib/systemd/`: every one passes
//! `systemd-analyze verify` without a warning, and they fit together as
//! minetd's socket activation needs (one socket unit per service, named
//! for it, feeding the one service).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{STEP, output_within, server_bin};

const UNITS: [&str; 4] = [
    "minetd.service",
    "minetd-echo.socket",
    "minetd-daytime.socket",
    "minetd@.service",
];
/// Where the service expects the binary once installed (`cargo install`
/// puts it in ~/.cargo/bin; the README says to copy it here).
const INSTALLED: &str = "/usr/local/bin/minetd";

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// The `Key=value` lines of a unit, comments and sections left out.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#') && !line.starts_with('['))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
        .collect()
}

fn value<'a>(settings: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[test]
fn every_unit_passes_systemd_analyze_verify_without_warnings() {
    let found = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        eprintln!(
            "skipped: systemd-analyze is not installed (package systemd; .ci/run installs it)"
        );
        return;
    }
    // verify checks that ExecStart's binary exists: point it at the one
    // cargo built, in a copy of the units.
    let dir: PathBuf = std::env::temp_dir().join(format!("minetd-units-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut paths = Vec::new();
    for name in UNITS {
        let text = unit_text(name);
        let text = text.replace(INSTALLED, &server_bin().display().to_string());
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write unit");
        paths.push(path);
    }
    let child = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("systemd-analyze");
    let output = output_within(child, STEP);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned()
        ),
        (Some(0), String::new(), String::new())
    );
}

#[test]
fn one_socket_unit_per_service_feeds_the_notify_service() {
    for (unit, name, port) in [
        ("minetd-echo.socket", "echo", "7"),
        ("minetd-daytime.socket", "daytime", "13"),
    ] {
        let socket = settings(&unit_text(unit));
        assert_eq!(value(&socket, "ListenStream"), [port], "{unit}");
        assert_eq!(value(&socket, "FileDescriptorName"), [name], "{unit}");
        assert_eq!(value(&socket, "Service"), ["minetd.service"], "{unit}");
        assert!(
            value(&socket, "Accept").iter().all(|v| *v == "no"),
            "{unit}"
        );
    }
    let service = settings(&unit_text("minetd.service"));
    assert_eq!(value(&service, "Type"), ["notify"]);
    assert_eq!(value(&service, "DynamicUser"), ["yes"]);
    let sockets: Vec<&str> = value(&service, "Sockets")
        .iter()
        .flat_map(|v| v.split_whitespace())
        .collect();
    assert_eq!(sockets, ["minetd-echo.socket", "minetd-daytime.socket"]);
    // With no service option, minetd serves the sockets it is given and
    // binds nothing of its own.
    assert_eq!(value(&service, "ExecStart"), [INSTALLED]);
    for key in ["NoNewPrivileges", "PrivateTmp"] {
        assert_eq!(value(&service, key), ["yes"], "{key}");
    }
    assert_eq!(value(&service, "ProtectSystem"), ["strict"]);
    assert!(!value(&service, "RestrictAddressFamilies").is_empty());
    assert!(!value(&service, "MemoryMax").is_empty());
}
