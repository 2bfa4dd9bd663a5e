//! README's "Trying it by hand" block, run as written in a non-interactive
//! shell (`sh -e`, so the first failing line fails the test) against a real
//! server, so that the README cannot drift from the product. The block
//! takes the binaries, the server's data dir and its URL from
//! `BARAZA_BIN`, `BARAZA_DATA` and `BARAZA_URL`, and writes the tablets
//! into a `mktemp -d` directory (here under the test's own temporary
//! directory); it runs in an empty directory, which must stay empty.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use baraza_tests::{binary, run_bounded, ServerProcess};

/// The first `sh` block after the "Trying it by hand" heading.
fn readme_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md at the workspace root");
    let section = readme
        .split_once("## Trying it by hand")
        .expect("README has a \"Trying it by hand\" section")
        .1;
    let block = section
        .split_once("```sh\n")
        .expect("the section has an sh block")
        .1;
    block
        .split_once("\n```")
        .expect("the sh block ends")
        .0
        .to_string()
}

#[test]
fn the_readme_story_runs_as_written() {
    let tmp = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(&tmp.path().join("server"));
    let here = tmp.path().join("checkout");
    let scratch = tmp.path().join("tmp");
    std::fs::create_dir_all(&here).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    let bin_dir = binary("baraza");
    let bin_dir = bin_dir.parent().expect("the binaries' directory");

    let mut shell = Command::new("sh");
    shell
        .arg("-e")
        .arg("-c")
        .arg(readme_block())
        .current_dir(&here)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", tmp.path())
        .env("TMPDIR", &scratch)
        .env("BARAZA_BIN", bin_dir)
        .env("BARAZA_DATA", server.data_dir())
        .env("BARAZA_URL", server.url());
    let out = run_bounded(&mut shell, Duration::from_secs(300));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the README block failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log:\n{}",
        out.status,
        server.log()
    );

    // What the story promises to show: the meeting on the second tablet,
    // both places of the offline conflict, and the supervisor's approval
    // synced back to the first tablet.
    for expected in [
        "Market baraza",
        "Residents raised street lighting.",
        "Mzee Otieno",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} not shown:\n{stdout}"
        );
    }
    assert!(stdout.contains("CONFLICT"), "no conflict shown:\n{stdout}");
    for place in ["Chief's camp", "Community hall"] {
        assert!(stdout.contains(place), "{place:?} not shown:\n{stdout}");
    }
    let last_show = stdout
        .rsplit_once("\nrecord ")
        .map(|(_, tail)| tail)
        .unwrap_or_default();
    assert!(
        last_show.contains("approved"),
        "the approval did not reach the first tablet:\n{stdout}"
    );

    // The server holds what happened: two tablets enrolled themselves, and
    // the supervisor's approval (audited as a review decision, by user).
    let audit = server.audit_entries();
    let enrolled = audit
        .iter()
        .filter(|e| e["event"] == "device_enrolled")
        .count();
    assert_eq!(enrolled, 2, "enrolments audited");
    assert!(
        audit.iter().any(|e| e["event"] == "review_decision"
            && e["details"]["decision"] == "approved"
            && e["details"]["user"] == "sgt.wanjiru"),
        "no approval by sgt.wanjiru audited"
    );

    // Nothing was written where the block ran.
    let left: Vec<_> = std::fs::read_dir(&here).unwrap().collect();
    assert!(
        left.is_empty(),
        "the block wrote into its directory: {left:?}"
    );
}
