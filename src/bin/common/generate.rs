//! `--generate KIND`, shared by both binaries: the manual page and the shell
//! completions, generated from the same clap definition as `--help`, so
//! none of them can fall behind an option.
//!
//! The manual page is clap's sections (name, synopsis, description,
//! options, and each subcommand's options) followed by hand-written roff
//! for what `--help` has no room for: output, exit status, signals,
//! environment, and the choices the program made.

use std::io::{self, Write};

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgMatches, Command};
use clap_complete::Shell;
use clap_mangen::Man;

/// The option's id in clap's matches.
const ID: &str = "generate";

/// What `--generate` prints.
const KINDS: [&str; 4] = ["man", "complete-bash", "complete-zsh", "complete-fish"];

/// What the hand-written part of a manual page needs.
pub struct Manual {
    /// The section: 8 for a daemon, 1 for a user command.
    pub section: &'static str,
    /// Roff text appended after clap's sections (`.SH` headings and all).
    pub extra: &'static str,
}

/// `cmd` with the `--generate KIND` option added.
pub fn with_option(cmd: Command) -> Command {
    cmd.arg(
        Arg::new(ID)
            .long(ID)
            .value_name("KIND")
            .value_parser(PossibleValuesParser::new(KINDS))
            .exclusive(true)
            .help(
                "Print the manual page (man) or a completion script (complete-bash, \
                 complete-zsh, complete-fish) to stdout, and exit",
            ),
    )
}

/// The KIND asked for, if `--generate` was given.
pub fn requested(matches: &ArgMatches) -> Option<&str> {
    matches.get_one::<String>(ID).map(String::as_str)
}

/// Prints what `kind` names for `cmd` to stdout.
pub fn print(cmd: Command, kind: &str, manual: &Manual) -> io::Result<()> {
    let mut out = Vec::new();
    match kind {
        "complete-bash" => complete(cmd, Shell::Bash, &mut out),
        "complete-zsh" => complete(cmd, Shell::Zsh, &mut out),
        "complete-fish" => complete(cmd, Shell::Fish, &mut out),
        // clap accepts only KINDS, so anything else is "man".
        _ => man(cmd, manual, &mut out)?,
    }
    let mut stdout = io::stdout().lock();
    stdout.write_all(&out)?;
    stdout.flush()
}

fn complete(mut cmd: Command, shell: Shell, out: &mut Vec<u8>) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

fn man(mut cmd: Command, manual: &Manual, out: &mut Vec<u8>) -> io::Result<()> {
    cmd.build();
    let page = Man::new(cmd.clone()).section(manual.section);
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    let commands: Vec<&Command> = cmd
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
        .collect();
    for sub in commands {
        // Each command's own synopsis and options, under one heading: clap
        // would otherwise leave them to pages of their own.
        let heading = format!("{} {}", cmd.get_name(), sub.get_name()).to_uppercase();
        writeln!(out, ".SH \"{heading}\"")?;
        let sub_page = Man::new(sub.clone().bin_name(format!(
            "{} {}",
            cmd.get_name(),
            sub.get_name()
        )));
        let mut section = Vec::new();
        sub_page.render_synopsis_section(&mut section)?;
        sub_page.render_description_section(&mut section)?;
        sub_page.render_options_section(&mut section)?;
        out.extend(demote_headings(&section));
    }
    out.extend_from_slice(manual.extra.as_bytes());
    page.render_version_section(out)
}

/// Turns `.SH` headings into `.SS`, so a command's sections nest under it.
fn demote_headings(roff: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(roff);
    let mut demoted = String::with_capacity(text.len());
    for line in text.lines() {
        match line.strip_prefix(".SH ") {
            Some(heading) => {
                demoted.push_str(".SS ");
                demoted.push_str(heading);
            }
            None => demoted.push_str(line),
        }
        demoted.push('\n');
    }
    demoted.into_bytes()
}
