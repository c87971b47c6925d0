//! `duplex serve`'s configuration from four sources — flag > `DUPLEX_*` env > TOML file
//! (`--config`, `DUPLEX_CONFIG`) > default — seen through `--print-config` and through what
//! a real server does; and the errors a bad file gets: unknown key, bad value, missing file.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ChildGuard, duplex, run_with_input, spawn_listening};

/// `duplex serve` with no DUPLEX_* variable from the test's own environment.
fn serve() -> Command {
    let mut command = duplex();
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("DUPLEX_") && name != "DUPLEX_WEB_LISTEN" {
            command.env_remove(name);
        }
    }
    command.arg("serve");
    command
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("duplex.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `command` (which ends in `--print-config` or fails) and returns (exit code, stdout,
/// stderr).
fn run(command: Command) -> (Option<i32>, String, String) {
    run_with_input(command, "")
}

/// The line of `--print-config`'s output that sets `key`.
fn setting<'a>(printed: &'a str, key: &str) -> &'a str {
    printed
        .lines()
        .find(|line| line.starts_with(&format!("{key} = ")))
        .unwrap_or_else(|| panic!("no `{key}` in --print-config:\n{printed}"))
}

#[test]
fn print_config_shows_flag_over_env_over_file_over_default_for_a_size_and_a_duration() {
    let dir = tempfile::tempdir().unwrap();
    // Line 1 is a comment, so line numbers are checked for real.
    let file = write_config(
        dir.path(),
        "# limits\nmax-payload = \"512KiB\"\nidle-timeout = \"90s\"\n",
    );
    let file = file.to_str().unwrap();

    // Default only.
    let mut command = serve();
    command.arg("--print-config");
    let (code, out, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        setting(&out, "max-payload"),
        "max-payload = \"1MiB\"  # default"
    );
    assert_eq!(
        setting(&out, "idle-timeout"),
        "idle-timeout = \"5m\"  # default"
    );
    assert!(out.contains("# config file: none"), "{out}");

    // The file over the defaults.
    let mut command = serve();
    command.args(["--config", file, "--print-config"]);
    let (code, out, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        setting(&out, "max-payload"),
        "max-payload = \"512KiB\"  # file, line 2"
    );
    assert_eq!(
        setting(&out, "idle-timeout"),
        "idle-timeout = \"90s\"  # file, line 3"
    );
    assert!(out.contains(&format!("# config file: {file}")), "{out}");

    // The environment over the file (named by DUPLEX_CONFIG this time).
    let mut command = serve();
    command
        .env("DUPLEX_CONFIG", file)
        .env("DUPLEX_MAX_PAYLOAD", "256KiB")
        .env("DUPLEX_IDLE_TIMEOUT", "2m")
        .arg("--print-config");
    let (code, out, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        setting(&out, "max-payload"),
        "max-payload = \"256KiB\"  # env DUPLEX_MAX_PAYLOAD"
    );
    assert_eq!(
        setting(&out, "idle-timeout"),
        "idle-timeout = \"2m\"  # env DUPLEX_IDLE_TIMEOUT"
    );

    // A flag over all of them.
    let mut command = serve();
    command
        .env("DUPLEX_MAX_PAYLOAD", "256KiB")
        .env("DUPLEX_IDLE_TIMEOUT", "2m")
        .args(["--config", file, "--max-payload", "64KiB"])
        .args(["--idle-timeout", "45s", "--print-config"]);
    let (code, out, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        setting(&out, "max-payload"),
        "max-payload = \"64KiB\"  # flag"
    );
    assert_eq!(
        setting(&out, "idle-timeout"),
        "idle-timeout = \"45s\"  # flag"
    );
}

#[test]
fn printed_config_loads_back_with_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    // Integers, booleans, a list and snake_case keys are accepted beside strings.
    let file = write_config(
        dir.path(),
        "max_connections = 20000\nadaptive-window = true\nanonymous-read = [\"lobby\", \"game.*\"]\n\
         store = \"memory\"\nmax-message-size = 8388608\n",
    );
    let mut command = serve();
    command.arg("--config").arg(&file).arg("--print-config");
    let (code, first, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        setting(&first, "max-connections"),
        "max-connections = 20000  # file, line 1"
    );
    assert_eq!(
        setting(&first, "adaptive-window"),
        "adaptive-window = true  # file, line 2"
    );
    assert_eq!(
        setting(&first, "anonymous-read"),
        "anonymous-read = [\"lobby\", \"game.*\"]  # file, line 3"
    );
    assert_eq!(
        setting(&first, "max-message-size"),
        "max-message-size = 8388608  # file, line 5"
    );
    // Settings with no value are listed, commented out.
    assert!(
        first.lines().any(|line| line.starts_with("# tls-cert =")),
        "{first}"
    );
    // Grouped as in --help.
    for heading in [
        "# Listen", "# HTTP/2", "# Limits", "# Store", "# Hub", "# Auth",
    ] {
        assert!(
            first.lines().any(|line| line == heading),
            "{heading}:\n{first}"
        );
    }

    // What it printed, as a file, gives the same values again.
    let printed = dir.path().join("printed.toml");
    std::fs::write(&printed, &first).unwrap();
    let mut command = serve();
    command.arg("--config").arg(&printed).arg("--print-config");
    let (code, second, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    let values = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| line.split("  # ").next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(values(&first), values(&second));
    assert!(
        second
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            // The harness sets the web listener's address in the environment.
            .filter(|line| !line.starts_with("web-listen = "))
            .all(|line| line.contains("  # file, line ")),
        "every value now comes from the file:\n{second}"
    );
}

/// Starts `duplex serve --config FILE` (with `env`) and returns it with its address.
fn serve_with_config(file: &Path, env: &[(&str, &str)]) -> (ChildGuard, std::net::SocketAddr) {
    let mut command = serve();
    command.arg("--config").arg(file).envs(env.iter().copied());
    let (child, addr, _stdout) = spawn_listening(command);
    (child, addr)
}

/// Whether `duplex echo` gets its reply from `addr`.
fn echo_works(addr: std::net::SocketAddr) -> bool {
    let mut echo = duplex();
    echo.args(["echo", "--addr", &addr.to_string()]);
    let (code, out, _err) = run_with_input(echo, "hello\n");
    code == Some(0) && out.contains("<<hello>>")
}

#[test]
fn the_server_listens_and_limits_as_its_file_says_unless_the_environment_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(
        dir.path(),
        "listen = \"127.0.0.1:0\"\nstore = \"memory\"\nmax-connections-per-ip = 1\n",
    );

    // The file alone: it listens where the file says, and one connection from this address
    // (held open without a word) leaves no room for a second.
    let (_server, addr) = serve_with_config(&file, &[]);
    let held = std::net::TcpStream::connect(addr).unwrap();
    assert!(
        !echo_works(addr),
        "a second connection from one IP was served"
    );
    drop(held);

    // The environment raises the file's limit: the same two connections are fine.
    let (_server, addr) = serve_with_config(&file, &[("DUPLEX_MAX_CONNECTIONS_PER_IP", "2")]);
    let _held = std::net::TcpStream::connect(addr).unwrap();
    assert!(echo_works(addr), "the env's limit of 2 did not apply");
}

/// Runs `duplex serve --config FILE --print-config` on a file holding `text`; returns its
/// exit code and stderr.
fn config_error(text: &str) -> (Option<i32>, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), text);
    let mut command = serve();
    command.arg("--config").arg(&file).arg("--print-config");
    let (code, out, err) = run(command);
    assert!(out.is_empty(), "printed a config despite the error: {out}");
    (code, err, file, dir)
}

#[test]
fn an_unknown_key_is_an_error_naming_it_the_file_and_the_line() {
    let (code, err, file, _dir) = config_error("store = \"memory\"\n\nmax-conections = 5\n");
    assert_eq!(code, Some(2), "{err}");
    let file = file.display().to_string();
    for needle in [
        "unknown key `max-conections`",
        &file,
        "line 3",
        "did you mean `max-connections`",
    ] {
        assert!(err.contains(needle), "`{needle}` missing in: {err}");
    }
}

#[test]
fn a_bad_value_is_an_error_naming_the_key_the_line_and_what_is_expected() {
    let (code, err, file, _dir) =
        config_error("store = \"memory\"\nmax-message-size = \"4 parsecs\"\n");
    assert_eq!(code, Some(2), "{err}");
    let file = file.display().to_string();
    for needle in [
        "bad value for `max-message-size`",
        &file,
        "line 2",
        "use B, KiB, MiB or GiB",
        "(default: 4MiB)",
    ] {
        assert!(err.contains(needle), "`{needle}` missing in: {err}");
    }

    // A duration needs its unit; a choice lists the choices.
    let (code, err, _file, _dir) = config_error("idle-timeout = 30\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("bad value for `idle-timeout`"), "{err}");
    assert!(err.contains("line 1"), "{err}");
    assert!(err.contains("30s"), "the expected form is shown: {err}");
    let (code, err, _file, _dir) = config_error("\nlag-policy = \"sometimes\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(
        err.contains("disconnect, drop-oldest or latest-per-key"),
        "{err}"
    );

    // Settings that need one another are checked for file values as for flags.
    let (code, err, _file, _dir) = config_error("tls-cert = \"server.pem\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("tls-cert needs tls-key"), "{err}");
}

#[test]
fn a_missing_config_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.toml");
    let mut command = serve();
    command.arg("--config").arg(&missing).arg("--print-config");
    let (code, out, err) = run(command);
    assert_eq!(code, Some(2), "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!(
            "cannot read the config file {}",
            missing.display()
        )),
        "{err}"
    );
}

#[test]
fn the_production_guides_config_file_loads() {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let guide = readme
        .split("\n## Production\n")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Production section in the README");
    let example = guide
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a TOML example in the Production section");
    let dir = tempfile::tempdir().unwrap();
    let file = write_config(dir.path(), example);
    let mut command = serve();
    // Only printed, never bound: the harness's web address may go.
    command.env_remove("DUPLEX_WEB_LISTEN");
    command.arg("--config").arg(&file).arg("--print-config");
    let (code, out, err) = run(command);
    assert_eq!(code, Some(0), "{err}");
    let keys: Vec<&str> = example
        .lines()
        .filter_map(|line| line.split(" = ").next())
        .filter(|key| !key.is_empty())
        .collect();
    assert!(keys.len() >= 5, "{example}");
    for (index, key) in keys.iter().enumerate() {
        assert!(
            setting(&out, key).ends_with(&format!("# file, line {}", index + 1)),
            "{key}:\n{out}"
        );
    }
}
