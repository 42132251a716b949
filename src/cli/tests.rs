//! Unit tests of the command line's parsing; the module is declared under `#[cfg(test)]`.

use super::*;
use std::path::Path;

fn hoist(args: &[&str]) -> Vec<String> {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    hoist_global_options(&args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// The original Go broker's README command lines, and global options in any place.
#[test]
fn global_options_move_ahead_of_the_command() {
    assert_eq!(
        hoist(&["install", "--config", "broker.yaml"]),
        ["--config", "broker.yaml", "install"]
    );
    assert_eq!(
        hoist(&["install", "--verify-only", "--config", "broker.yaml"]),
        ["--config", "broker.yaml", "install", "--verify-only"]
    );
    assert_eq!(
        hoist(&["start", "--log-level", "debug"]),
        ["--log-level", "debug", "start"]
    );
    assert_eq!(
        hoist(&[
            "status",
            "--log-format=json",
            "-c",
            "b.yaml",
            "--database",
            "a"
        ]),
        [
            "--log-format",
            "json",
            "-c",
            "b.yaml",
            "status",
            "--database",
            "a"
        ]
    );
    assert_eq!(
        hoist(&["--config=b.yaml", "start", "--standby", "--version"]),
        ["--config", "b.yaml", "--version", "start", "--standby"]
    );
    // Already in front: unchanged.
    let front = ["-c", "b.yaml", "--log-level", "info", "start"];
    assert_eq!(hoist(&front), front);
    // Help stays where it is, so it is the help of the command it follows.
    assert_eq!(hoist(&["start", "-h"]), ["start", "-h"]);
}

/// A command's own options keep their values, even ones that look like global options, and
/// positionals keep their order.
#[test]
fn hoisting_never_eats_a_commands_options_or_positionals() {
    assert_eq!(
        hoist(&["add", "--name", "x", "SELECT 1", "--config", "b.yaml"]),
        ["--config", "b.yaml", "add", "--name", "x", "SELECT 1"]
    );
    assert_eq!(
        hoist(&["add", "--name", "--config", "SELECT 1"]),
        ["add", "--name", "--config", "SELECT 1"]
    );
    assert_eq!(
        hoist(&[
            "add",
            "--name=-c",
            "--priority",
            "-5",
            "SELECT 1",
            "-c",
            "b.yaml"
        ]),
        [
            "-c",
            "b.yaml",
            "add",
            "--name",
            "-c",
            "--priority",
            "-5",
            "SELECT 1"
        ]
    );
    // After `--` everything is positional, even `--config`.
    assert_eq!(
        hoist(&["add", "--", "--config", "-c"]),
        ["add", "--", "--config", "-c"]
    );
    // A positional that names a command is still a positional of `add`.
    assert_eq!(
        hoist(&["add", "start", "--log-level", "debug"]),
        ["--log-level", "debug", "add", "start"]
    );
    assert_eq!(
        hoist(&[
            "schedule",
            "next",
            "@daily",
            "--tz",
            "--log-level",
            "--count",
            "3",
            "-c",
            "f"
        ]),
        [
            "-c",
            "f",
            "schedule",
            "next",
            "@daily",
            "--tz",
            "--log-level",
            "--count",
            "3"
        ]
    );
    // Unknown options stay for argh to reject, in place.
    assert_eq!(
        hoist(&["start", "--bogus", "--config", "b.yaml"]),
        ["--config", "b.yaml", "start", "--bogus"]
    );
}

#[test]
fn a_global_option_without_value_is_a_usage_error() {
    for args in [
        &["start", "--config"][..],
        &["--log-level"],
        &["status", "-c"],
    ] {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let e = hoist_global_options(&args).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
    }
}

#[test]
fn hoisted_command_lines_parse() {
    let parse = |args: &[&str]| {
        let args = hoist(args);
        let strs: Vec<&str> = args.iter().map(String::as_str).collect();
        Cli::from_args(&["pgsql-broker"], &strs).map_err(|e| e.output)
    };
    let cli = parse(&["install", "--verify-only", "--config", "broker.yaml"]).unwrap();
    assert_eq!(cli.config.as_deref(), Some(Path::new("broker.yaml")));
    assert!(matches!(
        cli.command,
        Some(Command::Install(InstallCmd {
            verify_only: true,
            ..
        }))
    ));
    let cli = parse(&["start", "--log-level", "DEBUG", "--log-format", "json"]).unwrap();
    assert_eq!(cli.log_level.as_deref(), Some("DEBUG"));
    assert_eq!(cli.log_format.as_deref(), Some("json"));
    let cli = parse(&["add", "--name", "--config", "SELECT 1", "-c", "x.yaml"]).unwrap();
    assert_eq!(cli.config.as_deref(), Some(Path::new("x.yaml")));
    let Some(Command::Add(add)) = cli.command else {
        panic!("not add")
    };
    assert_eq!(
        (add.name.as_str(), add.sql.as_str()),
        ("--config", "SELECT 1")
    );
    // The operator commands: ids and names stay positionals, repeated options keep each value.
    let cli = parse(&["retry", "7", "--config", "b.yaml", "--database", "x"]).unwrap();
    assert_eq!(cli.config.as_deref(), Some(Path::new("b.yaml")));
    let Some(Command::Retry(retry)) = cli.command else {
        panic!("not retry")
    };
    assert_eq!((retry.id, retry.database.as_deref()), (7, Some("x")));
    let cli = parse(&[
        "add",
        "--depends-on",
        "3",
        "--depends-on",
        "4,5",
        "SELECT 1",
        "-c",
        "f",
    ])
    .unwrap();
    let Some(Command::Add(add)) = cli.command else {
        panic!("not add")
    };
    assert_eq!(add.depends_on, ["3", "4,5"]);
    let cli = parse(&[
        "schedule", "add", "next", "@daily", "SELECT 1", "--tz", "UTC", "-c", "f",
    ])
    .unwrap();
    let Some(Command::Schedule(ScheduleCmd {
        command: ScheduleCommand::Add(sched),
    })) = cli.command
    else {
        panic!("not schedule add")
    };
    assert_eq!(
        (sched.name.as_str(), sched.cron.as_str(), sched.sql.as_str()),
        ("next", "@daily", "SELECT 1")
    );
    // -h is --help, for the program and for each command.
    for args in [
        &["-h"][..],
        &["start", "-h"],
        &["add", "-h"],
        &["schedule", "next", "-h"],
        &["schedule", "list", "-h"],
        &["jobs", "-h"],
        &["retry", "-h"],
    ] {
        let e = parse(args).unwrap_err();
        assert!(e.starts_with("Usage: pgsql-broker"), "{args:?}: {e}");
    }
}

/// Every command's value-taking options, read from argh's own usage line, are the ones
/// `COMMAND_VALUE_OPTIONS` lists, and every listed command exists: the table cannot drift
/// from the structs.
#[test]
fn option_table_matches_argh() {
    for (path, listed) in COMMAND_VALUE_OPTIONS {
        let mut args: Vec<&str> = path.split(' ').collect();
        args.push("--help");
        let help = match Cli::from_args(&["pgsql-broker"], &args) {
            Err(early) if early.status.is_ok() => early.output,
            _ => panic!("{path}: no help; is it a command?"),
        };
        let usage = help.lines().next().unwrap_or_default();
        assert!(
            usage.starts_with(&format!("Usage: pgsql-broker {path}")),
            "{usage}"
        );
        let mut from_argh: Vec<&str> = usage
            .split('[')
            .filter_map(|part| {
                let (option, rest) = part.split_once(' ')?;
                (option.starts_with("--") && !option.ends_with(']') && rest.starts_with('<'))
                    .then_some(option)
            })
            .collect();
        let mut listed = listed.to_vec();
        from_argh.sort_unstable();
        listed.sort_unstable();
        assert_eq!(from_argh, listed, "value options of `{path}`");
    }
    let top = match Cli::from_args(&["pgsql-broker"], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => panic!("no help"),
    };
    // Every command argh knows, at every level, is in the table.
    let mut paths = vec![String::new()];
    while let Some(path) = paths.pop() {
        let mut args: Vec<&str> = path.split_whitespace().collect();
        args.push("--help");
        let Err(early) = Cli::from_args(&["pgsql-broker"], &args) else {
            panic!("{path}: no help")
        };
        let commands = early.output.split("Commands:\n").nth(1).unwrap_or("");
        for line in commands.lines() {
            let Some(name) = line.strip_prefix("  ").and_then(|l| l.split(' ').next()) else {
                break;
            };
            if name.is_empty() {
                continue; // a wrapped description line
            }
            let sub = format!("{path} {name}").trim().to_string();
            assert!(
                COMMAND_VALUE_OPTIONS.iter().any(|(p, _)| *p == sub),
                "command `{sub}` is missing from COMMAND_VALUE_OPTIONS"
            );
            paths.push(sub);
        }
    }
    for option in GLOBAL_VALUE_OPTIONS.iter().chain(&GLOBAL_SWITCHES) {
        assert!(top.contains(option), "{option} missing from:\n{top}");
    }
}
