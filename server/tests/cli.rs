//! End-to-end tests of the `baraza-server` binary: real processes, real
//! TLS with the generated development CA, real files in temporary
//! directories. All traffic stays on 127.0.0.1 and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use baraza_tests::api::endpoint_at;
use baraza_tests::http::{HttpReply, Request};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The binary, with no `BARAZA_*` settings leaking in from the test
/// runner's environment.
fn baraza() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_baraza-server"));
    for var in [
        "BARAZA_DATA",
        "BARAZA_LISTEN",
        "BARAZA_TLS_CERT",
        "BARAZA_TLS_KEY",
        "BARAZA_CONFIG",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run baraza-server")
}

fn device_add(data: &Path, name: &str) -> (String, String) {
    // Every device acts for a user; an existing one is fine.
    let user = user_cmd(
        data,
        &[
            "add",
            "--name",
            "cpl.otieno",
            "--role",
            "officer",
            "--area",
            "kibera",
        ],
        "mvua ya jioni 7\n",
    );
    let stderr = String::from_utf8_lossy(&user.stderr);
    assert!(
        user.status.success() || stderr.contains("exists"),
        "{stderr}"
    );
    let output = run(baraza()
        .args(["device", "add", "--name", name, "--user", "cpl.otieno"])
        .arg("--data")
        .arg(data));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(output.status.success(), "device add failed: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout must be just the token: {stdout:?}");
    let token = lines[0].to_string();
    assert!(token.starts_with("bz_"), "{token}");
    let id = stderr
        .split("added device ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no device id on stderr: {stderr}"))
        .to_string();
    (id, token)
}

/// A running server, killed on drop so a failed assertion leaves nothing
/// behind.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    fn start(mut command: Command, stderr: PathBuf) -> Server {
        let log = std::fs::File::create(&stderr).unwrap();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn baraza-server");
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        // Keeps draining stdout for the server's whole life so it can never
        // block on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr,
        };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        server.addr = addr.trim().parse().unwrap();
                        return server;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(_) => panic!(
                    "server did not announce its address; exit: {:?}; stderr:\n{}",
                    server.child.try_wait(),
                    server.log()
                ),
            }
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM failed");
        wait_exit(&mut self.child)
            .unwrap_or_else(|| panic!("server ignored SIGTERM; stderr:\n{}", self.log()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_exit(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + EXIT_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// One HTTPS exchange, through the harness's HTTP client (hyper), trusting
/// only `ca`, within [`IO_TIMEOUT`].
fn https(addr: SocketAddr, ca: &Path, path: &str, headers: &[(&str, &str)]) -> HttpReply {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let request = Request {
            headers,
            ..Request::new("GET", path)
        };
        baraza_tests::http::send(&endpoint_at(addr, ca), request, IO_TIMEOUT)
            .await
            .expect("an HTTPS answer")
    })
}

/// The `baraza-refusal` header's code, if the response has one.
fn refusal_code(response: &HttpReply) -> Option<&str> {
    response.header(baraza_protocol::REFUSAL_HEADER)
}

fn healthz(addr: SocketAddr, ca: &Path) -> HttpReply {
    https(addr, ca, "/healthz", &[])
}

fn sync_upgrade(addr: SocketAddr, ca: &Path, authorization: Option<&str>) -> HttpReply {
    let mut headers = vec![
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    if let Some(value) = authorization {
        headers.push(("authorization", value));
    }
    https(addr, ca, "/v1/sync", &headers)
}

#[test]
fn a_device_registered_before_the_first_start_gets_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (id, token) = device_add(&data, "Kibera station tablet 3");
    assert_eq!(token.len(), "bz_".len() + 32 + 1 + 64);

    let listed = run(baraza().args(["device", "list"]).env("BARAZA_DATA", &data));
    assert!(listed.status.success());
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(listed.contains(&id), "{listed}");
    assert!(listed.contains("Kibera station tablet 3"), "{listed}");
    assert!(!listed.contains(&token[3..]), "list must never show tokens");
}

#[test]
fn a_running_server_serves_health_registers_devices_and_refuses_bad_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut command = baraza();
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let mut server = Server::start(command, tmp.path().join("server.log"));
    let ca = data.join("tls/ca.pem");
    assert!(ca.is_file());
    assert!(server.log().contains("--ca"), "{}", server.log());

    let health = healthz(server.addr, &ca);
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(health.body, "ok");

    // The server holds the database, so this goes through admin.sock.
    assert!(data.join("admin.sock").exists());
    let (id, token) = device_add(&data, "tablet 3");

    let missing = sync_upgrade(server.addr, &ca, None);
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(missing.body, "missing bearer token");
    assert_eq!(refusal_code(&missing), Some("missing_token"), "{missing:?}");

    let wrong = sync_upgrade(server.addr, &ca, Some("Bearer bz_not_a_real_token"));
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert_eq!(wrong.body, "unknown device token");
    assert_eq!(refusal_code(&wrong), Some("unknown_token"), "{wrong:?}");

    let good = sync_upgrade(server.addr, &ca, Some(&format!("Bearer {token}")));
    assert_eq!(good.status, 101, "{good:?}");
    assert!(
        good.head
            .to_ascii_lowercase()
            .contains("upgrade: websocket"),
        "{good:?}"
    );

    let revoked = run(baraza()
        .args(["device", "revoke", "--id", &id])
        .arg("--data")
        .arg(&data));
    assert!(revoked.status.success(), "{revoked:?}");
    let after = sync_upgrade(server.addr, &ca, Some(&format!("Bearer {token}")));
    assert_eq!(after.status, 401, "{after:?}");
    assert_eq!(
        after.body,
        "revoked: this device was reported lost or stolen"
    );
    // A tablet knows to wipe from the code, not from the words.
    assert_eq!(refusal_code(&after), Some("revoked"), "{after:?}");

    // Plain HTTP on the TLS port, and a client that hangs up mid-handshake,
    // end only their own connections.
    let mut plain = TcpStream::connect(server.addr).unwrap();
    plain.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut ignored = Vec::new();
    let _ = plain.read_to_end(&mut ignored);
    drop(TcpStream::connect(server.addr).unwrap());
    assert_eq!(healthz(server.addr, &ca).status, 200);

    // A second server on the same data directory must fail without
    // disturbing the first (in particular, without taking its admin.sock).
    let second = run(baraza()
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data));
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use"),
        "{second:?}"
    );
    let (_, _) = device_add(&data, "tablet 4");

    let status = server.terminate();
    assert!(
        status.success(),
        "exit {status:?}; stderr:\n{}",
        server.log()
    );
    assert!(!data.join("admin.sock").exists());
    let log = server.log();
    assert!(!log.contains(&token[3..]), "a token reached the log");

    // Everything registered while it ran is still there.
    let listed = run(baraza().args(["device", "list", "--data"]).arg(&data));
    let listed = String::from_utf8(listed.stdout).unwrap();
    assert!(
        listed.contains("tablet 4") && listed.contains("revoked"),
        "{listed}"
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("baraza.toml");
    // Were the file to win, the server would try to bind a TEST-NET
    // address it does not have, and fail.
    std::fs::write(
        &config,
        "data = \"file-data\"\nlisten = \"192.0.2.1:8443\"\n[limits]\nframe_bytes_max = 65536\n",
    )
    .unwrap();
    let flag_data = tmp.path().join("flag-data");
    let mut command = baraza();
    command
        .args(["serve", "--data"])
        .arg(&flag_data)
        .env("BARAZA_CONFIG", &config)
        .env("BARAZA_LISTEN", "127.0.0.1:0")
        .env("BARAZA_DATA", tmp.path().join("env-data"));
    let mut server = Server::start(command, tmp.path().join("server.log"));
    assert!(server.addr.ip().is_loopback() && server.addr.port() != 0);
    let ca = flag_data.join("tls/ca.pem");
    assert_eq!(healthz(server.addr, &ca).status, 200);
    assert!(!tmp.path().join("env-data").exists());
    assert!(!tmp.path().join("file-data").exists());
    assert!(server.terminate().success());

    std::fs::write(&config, "[limits]\nframe_bytes_max = 0\n").unwrap();
    let refused = run(baraza()
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--data")
        .arg(&flag_data));
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("frame_bytes_max"),
        "{refused:?}"
    );
}

/// Runs `baraza-server user ARGS --data DATA`, with `stdin` as input.
fn user_cmd(data: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = baraza()
        .arg("user")
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baraza-server user");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn an_admin_manages_users_with_or_without_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // Offline: a weak password is refused with the reason.
    let weak = user_cmd(
        &data,
        &[
            "add",
            "--name",
            "achieng",
            "--role",
            "liaison",
            "--area",
            "kibera-north",
        ],
        "password123\n",
    );
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("common passwords"));
    let added = user_cmd(
        &data,
        &[
            "add",
            "--name",
            "achieng",
            "--role",
            "liaison",
            "--area",
            "kibera-north",
        ],
        "lamps on Olympic road\n",
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );

    // With a server running, the same commands go through its admin socket.
    let mut server = Server::start(
        {
            let mut c = baraza();
            c.args(["serve", "--listen", "127.0.0.1:0", "--data"])
                .arg(&data);
            c
        },
        tmp.path().join("server.log"),
    );
    let added = user_cmd(
        &data,
        &[
            "add",
            "--name",
            "wanjiru",
            "--role",
            "supervisor",
            "--area",
            "kibera-north",
            "--area",
            "mathare",
        ],
        "review queue 2024\n",
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let disabled = user_cmd(&data, &["disable", "--name", "achieng"], "");
    assert!(disabled.status.success());
    let listed = user_cmd(&data, &["list"], "");
    let listing = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listing.contains("achieng\tLiaison\tkibera-north\tdisabled"),
        "{listing}"
    );
    assert!(
        listing.contains("wanjiru\tSupervisor\tkibera-north,mathare\tactive"),
        "{listing}"
    );
    // Passwords and their hashes never appear, in the listing or the log.
    assert!(!listing.contains("argon2") && !listing.contains("review queue"));
    assert!(!server.log().contains("review queue 2024"));
    assert!(server.terminate().success());
}
