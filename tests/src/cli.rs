//! The `baraza` command-line tablet as the tests run it: no `BARAZA_*`
//! settings leaking in from the environment, a key file beside the data
//! directory, every run bounded.

use std::path::Path;
use std::process::Command;

use crate::process::{binary, run_bounded, sibling};
use crate::tablet::SYNC_TIMEOUT;

/// The `baraza` command-line tablet on data directory `data`, with no
/// `BARAZA_*` settings leaking in. Its key file is `DATA.key`, beside the
/// data dir: `init` or `enroll` creates it on a new tablet.
pub fn cli(data: &Path) -> Command {
    let mut command = Command::new(binary("baraza"));
    for var in [
        "BARAZA_TABLET_DATA",
        "BARAZA_TOKEN",
        "BARAZA_LOG",
        "BARAZA_KEY_FILE",
    ] {
        command.env_remove(var);
    }
    command
        .arg("--data")
        .arg(data)
        .arg("--key-file")
        .arg(sibling(data, "key"));
    command
}

/// Runs the `baraza` CLI with `args`, bounded, requires success and
/// returns its stdout.
pub fn run_cli(data: &Path, args: &[&str]) -> String {
    let output = run_bounded(cli(data).args(args), SYNC_TIMEOUT);
    assert!(
        output.status.success(),
        "baraza {args:?} failed ({:?}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// Runs the CLI on `data` expecting it to fail; returns its standard error.
pub fn cli_fails(data: &Path, args: &[&str]) -> String {
    let output = run_bounded(cli(data).args(args), SYNC_TIMEOUT);
    assert!(
        !output.status.success(),
        "baraza {args:?} should have failed; stdout: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Writes a CA certificate (its key thrown away) to `path`, for a tablet
/// that is set up offline: `init` checks the CA file it is given.
pub fn write_offline_ca(path: &Path) {
    std::fs::write(path, OFFLINE_CA).expect("write the CA file");
}

const OFFLINE_CA: &str = include_str!("../../cli/tests/fixtures/ca.pem");
