//! Command-line manners: output cut short by its reader (`| head`) ends
//! the program quietly, and nothing writes colour codes into a log.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use baraza_tests::{
    binary, cli, pin_to_sled, run_bounded, run_cli, run_server_command, ServerProcess,
};

/// Runs `command` with its standard output already closed by its reader
/// (the pipe's read end is dropped before the program writes), bounded;
/// returns its exit status and standard error.
fn with_reader_gone(command: &mut Command) -> (std::process::ExitStatus, String) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let mut stderr = child.stderr.take().expect("piped stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{command:?} did not finish"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().unwrap_or_default())
}

/// A shell pipeline `PROGRAM ARGS | head -1` with pipefail, bounded:
/// the exit status of the whole (so the program's own), the line head
/// printed, and the program's standard error.
fn piped_to_head(program: &Path, args: &[&str]) -> (bool, String, String) {
    let quoted: Vec<String> = std::iter::once(program.to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    let script = format!("set -o pipefail; {} | head -1", quoted.join(" "));
    let out = run_bounded(
        Command::new("bash")
            .args(["-c", &script])
            .env_remove("BARAZA_LOG")
            .env_remove("RUST_BACKTRACE"),
        Duration::from_secs(60),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_quiet(stderr: &str) {
    for noise in ["panicked", "Broken pipe", "backtrace", "error"] {
        assert!(!stderr.contains(noise), "{noise:?} in stderr: {stderr}");
    }
}

/// A tablet with a few records, set up offline.
fn tablet_with_records(tmp: &Path) -> std::path::PathBuf {
    let ca = tmp.join("ca.pem");
    baraza_tests::write_offline_ca(&ca);
    let dir = tmp.join("tablet");
    run_cli(
        &dir,
        &[
            "init",
            "--server",
            "https://127.0.0.1:9",
            "--ca",
            ca.to_str().unwrap(),
            "--token",
            "bz_0123456789abcdef0123456789abcdef_secret",
            "--user",
            "lia.achieng",
            "--area",
            "kibera",
        ],
    );
    for title in ["Market baraza", "School baraza", "Water point baraza"] {
        run_cli(&dir, &["meeting", "new", title]);
    }
    dir
}

#[test]
fn a_listing_whose_reader_goes_away_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tablet_with_records(tmp.path());

    let (status, stderr) = with_reader_gone(cli(&dir).env("RUST_BACKTRACE", "1").arg("list"));
    assert!(status.success(), "{status:?}: {stderr}");
    assert_quiet(&stderr);

    let key = format!("{}.key", dir.display());
    let (ok, head, stderr) = piped_to_head(
        &binary("baraza"),
        &["--data", dir.to_str().unwrap(), "--key-file", &key, "list"],
    );
    assert!(ok, "{stderr}");
    assert!(head.starts_with("ID "), "{head}");
    assert_quiet(&stderr);
}

#[test]
fn server_commands_whose_reader_goes_away_end_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    // The command line's manners are what is tested, not the store.
    pin_to_sled(&data);
    for i in 0..3 {
        let out = run_server_command(
            &data,
            &[
                "user",
                "add",
                "--name",
                &format!("pc.officer{i}"),
                "--role",
                "officer",
                "--area",
                "kibera",
            ],
            "mvua ya jioni 7\n",
        );
        assert!(out.status.success(), "{out:?}");
    }
    for args in [["user", "list"], ["audit", "export"]] {
        let (status, stderr) = with_reader_gone(
            Command::new(binary("baraza-server"))
                .args(args)
                .arg("--data")
                .arg(&data)
                .env("RUST_LOG", "warn"),
        );
        assert!(status.success(), "{args:?}: {status:?}: {stderr}");
        assert_quiet(&stderr);
        let (ok, head, stderr) = piped_to_head(
            &binary("baraza-server"),
            &[args[0], args[1], "--data", data.to_str().unwrap()],
        );
        assert!(ok, "{args:?}: {stderr}");
        assert!(!head.is_empty());
        assert_quiet(&stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_written_to_a_file_or_pipe_carry_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    server.add_user("lia.achieng", "liaison", &["kibera"]);
    let token = server.add_device_for("Kibera tablet 3", "lia.achieng");
    let dir = tmp.path().join("tablet");
    run_cli(
        &dir,
        &[
            "init",
            "--server",
            &server.url(),
            "--ca",
            server.ca_path().to_str().unwrap(),
            "--token",
            &token,
            "--user",
            "lia.achieng",
            "--area",
            "kibera",
        ],
    );
    run_cli(&dir, &["meeting", "new", "Market baraza"]);
    let out = run_bounded(
        cli(&dir).env("BARAZA_LOG", "debug").arg("sync"),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("DEBUG"),
        "the sync logged nothing: {stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "colour codes in a pipe: {stderr:?}"
    );

    // The server's log goes to a file.
    let log = server.log();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\x1b'), "colour codes in the log file");
}
