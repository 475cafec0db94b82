//! The outside programs some tests need (Go, nginx, HAProxy, promtool, Chromium,
//! systemd-analyze, ...), and the one rule for when one is missing: under CI, where
//! run-tests.sh installs them all, the test fails; anywhere else it is skipped with a
//! message loud enough to be seen in the test output.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Whether this is the CI run (`CI` set, not empty and not `false`), where every program the
/// tests need is installed and a missing one is a failure.
pub fn under_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
}

/// `what` (a test, or a group of tests) cannot run because of `why` (which says how to
/// get what is missing): under CI that fails (panics); elsewhere it prints a loud note, and
/// the caller returns as skipped.
pub fn skip(what: &str, why: &str) {
    assert!(!under_ci(), "CI is set, and {what} cannot run: {why}");
    eprintln!(
        "\n################################################################\n\
         ## SKIPPED {what}: {why}\n\
         ################################################################\n"
    );
}

/// The path of the program `name` on `PATH`; when it is not there, [`skip`]s `what` and
/// returns `None`.
pub fn tool(name: &str, what: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip(
            what,
            &format!("{name} is not installed (./run-tests.sh installs it)"),
        );
    }
    found
}

/// Runs `command` to its end with `input` on its stdin (written from a thread of its own,
/// so a program that answers before it has read everything cannot block on us); what it
/// wrote. Panics when it cannot be started.
pub fn run_with_input(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let mut stdin = child.stdin.take().expect("a piped stdin");
    let input = input.to_vec();
    // A program that exits without reading it all closes the pipe: not our failure.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    writer.join().expect("the stdin writer");
    output
}

/// Runs `command` to its end, with nothing on its stdin: [`outcome`].
pub fn run(command: &mut Command) -> (bool, String) {
    outcome(&run_with_input(command, &[]))
}

/// Whether a program succeeded, and its stdout followed by its stderr (for an assertion's
/// message).
pub fn outcome(output: &Output) -> (bool, String) {
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}
