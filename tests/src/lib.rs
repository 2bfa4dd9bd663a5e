//! The end-to-end harness: real `baraza-server` processes, real TLS with
//! the server's generated development CA, real sled files in temporary
//! directories, and tablets that are real [`baraza_client::Client`]s.
//!
//! It is not a simulator: dropped, duplicated and reordered messages are
//! the `sync-protocol` simulator's job. The faults here are the ones only
//! real processes have: SIGKILL, SIGTERM, restarts on the same directory,
//! hostile bytes on a real socket.
//!
//! Layout:
//! - [`ServerProcess`]: starts, restarts, kills (`-9`) and stops (SIGTERM) a
//!   server on a data directory, and registers devices on it.
//! - [`Tablet`]: a `Client` in its own directory with its own device token
//!   and its own random store key ([`new_key`]).
//! - [`RawConnection`]: a sync WebSocket that sends whatever bytes a test
//!   wants and decodes what the server answers.
//! - [`cli`]: the `baraza` command-line tablet, with a key file beside its
//!   data dir.
//!
//! The binaries: a test crate cannot see another package's
//! `CARGO_BIN_EXE_*`, so [`binary`] looks for them next to the test
//! executable. Run `cargo build --workspace --bins` before `cargo test`.
//!
//! Every wait is bounded, and all traffic stays on 127.0.0.1.

pub mod sse;
pub mod webdriver;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use baraza_client::{Client, Field, SyncEvent, SyncListener, SyncReport};
use baraza_protocol::codec;
use baraza_protocol::{ErrorMsg, Hello, Limits, Message, Welcome, PROTOCOL_VERSION};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

/// How long a server may take to announce its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `sync_once` of a few hundred records may take.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a raw connection waits for the server's next frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

/// How a test reads what the server sends: every structural bound of the
/// codec, but no frame size limit, so a test sees whatever the server
/// chose to send rather than a limit of its own.
const SERVER_FRAMES: Limits = Limits {
    frame_bytes_max: usize::MAX,
    ..Limits::DEFAULT
};

/// The path of a workspace binary, next to the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/<name>`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: the end-to-end tests drive the real binaries, so run \
         `cargo build --workspace --bins` before `cargo test`",
        path.display()
    );
    path
}

/// Runs a command to completion, failing the test if it takes longer than
/// `limit`. Output is collected on threads so a chatty child never blocks.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = match wait_bounded(&mut child, limit) {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish within {limit:?}");
        }
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a child process") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `condition` every 20 ms until it holds, failing the test with
/// `what` after `limit`. For waiting on another process or task; never a
/// substitute for an assertion.
pub async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A `baraza-server serve` process on a data directory. Dropping it kills
/// the process, so a failed assertion leaves nothing running.
pub struct ServerProcess {
    data: PathBuf,
    config: Option<PathBuf>,
    log: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
}

impl ServerProcess {
    /// Starts a server on `data` (created if missing) with default limits.
    pub fn start(data: &Path) -> ServerProcess {
        ServerProcess::launch(data, None)
    }

    /// Starts a server with a config file holding `toml` (written next to
    /// the data directory), e.g. a `[limits]` table.
    pub fn start_with_config(data: &Path, toml: &str) -> ServerProcess {
        let config = sibling(data, "toml");
        std::fs::write(&config, toml).expect("write the server config file");
        ServerProcess::launch(data, Some(config))
    }

    fn launch(data: &Path, config: Option<PathBuf>) -> ServerProcess {
        let mut server = ServerProcess {
            data: data.to_path_buf(),
            config,
            log: sibling(data, "log"),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // Appending keeps the logs of every run on this directory together.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let mut command = server_command();
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&self.data);
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn baraza-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines_tx, lines_rx) = mpsc::channel();
        // Drains stdout for the server's whole life so it never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        self.addr = addr.trim().parse().expect("a socket address");
                        return;
                    }
                }
                Err(_) => panic!(
                    "the server did not announce its address within {STARTUP_TIMEOUT:?}; \
                     log:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Starts the server again on the same data directory and config, after
    /// [`kill9`](Self::kill9) or [`terminate`](Self::terminate). It listens
    /// on a new port: tablets must be pointed at [`url`](Self::url) again.
    pub fn restart(&mut self) {
        assert!(!self.is_running(), "restart needs the server stopped first");
        self.spawn();
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL tablets are configured with.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The generated development CA tablets must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.data.join("tls").join("ca.pem")
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Everything the server has logged on this directory so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Adds a user (through `baraza-server user add`) with the harness's
    /// password; a user that already exists is left as it is.
    pub fn add_user(&self, name: &str, role: &str, areas: &[&str]) {
        let mut args = vec!["user", "add", "--name", name, "--role", role];
        for area in areas {
            args.extend(["--area", area]);
        }
        let output = run_server_command(&self.data, &args, &format!("{HARNESS_PASSWORD}\n"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("exists"),
            "user add failed: {stderr}"
        );
    }

    /// Registers a device for a supervisor of [`TEST_AREAS`] named after
    /// the device ([`user_for`]), and returns its token. Tests about who
    /// may do what use [`ServerProcess::add_device_for`].
    pub fn add_device(&self, name: &str) -> String {
        let user = user_for(name);
        self.add_user(&user, "supervisor", TEST_AREAS);
        self.add_device_for(name, &user)
    }

    /// Registers a device acting for `user` through `baraza-server device
    /// add` (which goes through the admin socket while the server runs)
    /// and returns its token.
    pub fn add_device_for(&self, name: &str, user: &str) -> String {
        let output = run_bounded(
            server_command()
                .args(["device", "add", "--name", name, "--user", user, "--data"])
                .arg(&self.data),
            Duration::from_secs(30),
        );
        assert!(
            output.status.success(),
            "device add failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).expect("a UTF-8 token");
        let token = stdout.trim().to_string();
        assert!(
            !token.is_empty() && !token.contains('\n'),
            "device add must print exactly the token: {stdout:?}"
        );
        token
    }

    /// The audit log, through `baraza-server audit export`, one JSON value
    /// per entry.
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let out = run_server_command(&self.data, &["audit", "export"], "");
        assert!(out.status.success(), "audit export failed: {out:?}");
        String::from_utf8(out.stdout)
            .expect("UTF-8 audit export")
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON entry per line"))
            .collect()
    }

    /// Kills the server with SIGKILL: no flush, no clean-shutdown marker.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("a running server");
        child.kill().expect("send SIGKILL");
        let status = wait_bounded(&mut child, EXIT_TIMEOUT).expect("exit after SIGKILL");
        assert!(!status.success(), "a killed server cannot exit cleanly");
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns
    /// its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("a running server");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let status = wait_bounded(child, EXIT_TIMEOUT);
        self.child = None;
        status.unwrap_or_else(|| {
            panic!(
                "the server ignored SIGTERM for {EXIT_TIMEOUT:?}; log:\n{}",
                self.log()
            )
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `DIR` → `DIR.<ext>`, a file beside the directory.
fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".");
    name.push(ext);
    PathBuf::from(name)
}

/// The server binary with no `BARAZA_*` settings leaking in from the
/// environment the tests run in.
fn server_command() -> Command {
    let mut command = Command::new(binary("baraza-server"));
    for var in [
        "BARAZA_DATA",
        "BARAZA_LISTEN",
        "BARAZA_TLS_CERT",
        "BARAZA_TLS_KEY",
        "BARAZA_CONFIG",
        "BARAZA_CONNECTIONS_MAX",
        "BARAZA_CONNECTIONS_PER_ADDRESS_MAX",
        "BARAZA_HANDSHAKE_TIMEOUT_MS",
        "BARAZA_IDLE_TIMEOUT_MS",
    ] {
        command.env_remove(var);
    }
    command.env("RUST_LOG", "info");
    command
}

// ---------------------------------------------------------------------------
// Tablets
// ---------------------------------------------------------------------------

/// The review desk's starting point: a server with an officer, a liaison
/// and a supervisor (`sgt.wanjiru`) of kibera, and a meeting the liaison
/// and the officer placed differently while offline (a conflict on
/// `place`), submitted for review but not yet synced.
pub struct ReviewWorld {
    /// The server.
    pub server: ServerProcess,
    /// `cpl.otieno`'s tablet.
    pub officer: Tablet,
    /// `lia.achieng`'s tablet.
    pub liaison: Tablet,
    /// The conflicted meeting's id.
    pub meeting: String,
    _tmp: tempfile::TempDir,
}

impl ReviewWorld {
    /// Sets it up.
    pub async fn open() -> ReviewWorld {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let server = ServerProcess::start(&tmp.path().join("server"));
        server.add_user("cpl.otieno", "officer", &["kibera"]);
        server.add_user("lia.achieng", "liaison", &["kibera"]);
        server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
        let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera");
        let liaison = Tablet::for_user(&server, "liaison's tablet", "lia.achieng", "kibera");
        let title = ("title".to_string(), "Street lighting baraza".to_string());
        let meeting = liaison
            .create_record("meeting", "kibera", vec![title])
            .expect("create the meeting");
        liaison.sync().await;
        officer.sync().await;
        liaison
            .set(&meeting, "place", "Chief's camp")
            .expect("set the place");
        officer
            .set(&meeting, "place", "Social hall")
            .expect("set the place");
        liaison.submit(&meeting).expect("submit the meeting");
        ReviewWorld {
            server,
            officer,
            liaison,
            meeting,
            _tmp: tmp,
        }
    }
}

/// The areas the default harness user supervises.
pub const TEST_AREAS: &[&str] = &["unassigned", "eastleigh", "kibera-north", "mathare"];

/// The password of every user the harness adds.
pub const HARNESS_PASSWORD: &str = "harness walks the beat 9";

/// The user [`ServerProcess::add_device`] ties a device named `name` to.
pub fn user_for(device_name: &str) -> String {
    let mut user = String::new();
    for c in device_name.chars() {
        if c.is_ascii_alphanumeric() {
            user.push(c.to_ascii_lowercase());
        } else if !user.ends_with('.') {
            user.push('.');
        }
    }
    user.trim_matches('.').to_string()
}

/// A tablet: an SDK [`Client`] with its own data directory, registered on
/// the server as its own device. Derefs to the `Client`.
pub struct Tablet {
    name: String,
    client: Client,
    token: String,
    _dir: tempfile::TempDir,
}

/// A random store key, as an app would keep in the platform keystore.
pub fn new_key() -> [u8; 32] {
    rand::random()
}

impl Tablet {
    /// A new device acting for a supervisor of [`TEST_AREAS`]: registers
    /// it on `server` and configures a fresh store sealed under a random key.
    pub fn new(server: &ServerProcess, name: &str) -> Tablet {
        let token = server.add_device(name);
        let tablet = Tablet::with_token(server, name, token);
        tablet
            .client
            .set_identity(&user_for(name), "unassigned")
            .expect("set the tablet's user");
        tablet
    }

    /// A new device acting for `user` (who must exist), filing new records
    /// in `area`.
    pub fn for_user(server: &ServerProcess, name: &str, user: &str, area: &str) -> Tablet {
        let token = server.add_device_for(name, user);
        let tablet = Tablet::with_token(server, name, token);
        tablet
            .client
            .set_identity(user, area)
            .expect("set the tablet's user");
        tablet
    }

    fn with_token(server: &ServerProcess, name: &str, token: String) -> Tablet {
        let dir = tempfile::tempdir().expect("a tablet directory");
        let client = Client::open(dir.path(), &new_key()).expect("open the tablet store");
        let tablet = Tablet {
            name: name.to_string(),
            client,
            token,
            _dir: dir,
        };
        tablet.point_at(server);
        tablet
    }

    /// Configures the tablet for `server`'s current address (after a
    /// restart the port changes) with its existing token.
    pub fn point_at(&self, server: &ServerProcess) {
        self.client
            .configure(&server.url(), Some(&server.ca_path()), &self.token)
            .expect("configure the tablet");
    }

    /// The device's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Syncs once, failing the test if the sync fails or takes longer than
    /// [`SYNC_TIMEOUT`].
    pub async fn sync(&self) -> SyncReport {
        self.sync_within(SYNC_TIMEOUT).await
    }

    /// Syncs once with an explicit time limit.
    pub async fn sync_within(&self, limit: Duration) -> SyncReport {
        let listener = baraza_client::NoListener;
        match tokio::time::timeout(limit, self.client.sync_once(&listener)).await {
            Ok(Ok(report)) => report,
            Ok(Err(err)) => panic!("{} could not sync: {err}", self.name),
            Err(_) => panic!("{}'s sync did not finish within {limit:?}", self.name),
        }
    }

    /// One field of a record, which must exist.
    pub fn field(&self, id: &str, name: &str) -> Field {
        let record = self.client.get(id).expect("the record is on the tablet");
        record
            .fields
            .into_iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("{} has no field {name:?} in {id}", self.name))
    }

    /// The value a field shows, or None if the record or field is not
    /// (yet) on this tablet.
    pub fn value(&self, id: &str, name: &str) -> Option<String> {
        let record = self.client.get(id).ok()?;
        record
            .fields
            .into_iter()
            .find(|f| f.name == name)
            .map(|f| f.value)
    }

    /// Every record held, with its heads.
    pub fn all_heads(&self) -> BTreeMap<String, Vec<String>> {
        self.client
            .list()
            .expect("list records")
            .into_iter()
            .map(|id| {
                let heads = self.client.heads(&id).expect("heads of a listed record");
                (id, heads)
            })
            .collect()
    }
}

impl Deref for Tablet {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// A listener that keeps every event, for tests that watch a background sync.
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<SyncEvent>>,
}

impl Recorder {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<SyncEvent> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many events so far match `pred`.
    pub fn count(&self, pred: impl Fn(&SyncEvent) -> bool) -> usize {
        self.events().iter().filter(|e| pred(e)).count()
    }
}

impl SyncListener for Recorder {
    fn on_event(&self, event: SyncEvent) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }
}

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

// ---------------------------------------------------------------------------
// Raw sync connections
// ---------------------------------------------------------------------------

type Socket = WebSocketStream<TlsStream<TcpStream>>;

/// The automerge actor a device writes under: its id, then `install`
/// (one byte, repeated) for the install, as the server requires.
pub fn actor_for(device: &str, install: u8) -> automerge::ActorId {
    let mut bytes: Vec<u8> = (0..device.len() / 2)
        .map(|i| u8::from_str_radix(&device[2 * i..2 * i + 2], 16).expect("a hex device id"))
        .collect();
    bytes.extend_from_slice(&[install; 4]);
    automerge::ActorId::from(bytes)
}

/// A push of `doc`'s changes since `base`, as a hand-made client sends it.
pub fn push_since(
    id: baraza_protocol::DocId,
    base: &[baraza_protocol::Head],
    doc: &automerge::Automerge,
) -> Message {
    Message::Push(baraza_protocol::Push {
        doc: id,
        base: base.to_vec(),
        heads: baraza_protocol::to_heads(&doc.get_heads()),
        changes: doc
            .get_changes(&baraza_protocol::to_hashes(base))
            .iter()
            .map(|c| serde_bytes::ByteBuf::from(c.raw_bytes().to_vec()))
            .collect(),
    })
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

/// A TLS client trusting only the CA in `ca` (the server's development CA).
pub fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the CA file") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Opens TLS to the server and attempts the WebSocket upgrade.
async fn upgrade(
    server: &ServerProcess,
    authorization: Option<&str>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let tcp = TcpStream::connect(server.addr())
        .await
        .expect("TCP connect to the server");
    let name = ServerName::try_from("localhost").expect("a server name");
    let tls = tls_connector(&server.ca_path())
        .connect(name, tcp)
        .await
        .expect("TLS handshake with the server");
    let mut request = format!("wss://localhost:{}/v1/sync", server.addr().port())
        .into_client_request()
        .expect("a WebSocket request");
    if let Some(value) = authorization {
        request.headers_mut().insert(
            "authorization",
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    tokio_tungstenite::client_async_with_config(request, tls, None)
        .await
        .map(|(ws, _)| ws)
}

/// Runs `baraza-server ARGS --data DATA` with `stdin` as its input (for the
/// `user`, `device` and `audit` commands) and returns its output.
pub fn run_server_command(data: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = server_command()
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn baraza-server");
    if let Some(mut input) = child.stdin.take() {
        input
            .write_all(stdin.as_bytes())
            .expect("write to baraza-server");
    }
    child.wait_with_output().expect("wait for baraza-server")
}

/// A plain HTTPS GET (HTTP/1.1, `Connection: close`) with an optional
/// bearer token: the status and the body.
pub async fn https_get(server: &ServerProcess, path: &str, token: Option<&str>) -> (u16, String) {
    let reply = https_request(server, "GET", path, token, None).await;
    (reply.status, reply.body)
}

/// A supervisor signed in at the review desk through its API, holding what
/// a browser would: the session cookie and the CSRF token.
pub struct DeskSession<'a> {
    server: &'a ServerProcess,
    /// The session cookie, as `name=value`.
    pub cookie: String,
    /// The session's CSRF token, sent with every state-changing request.
    pub csrf: String,
    /// The whole `Set-Cookie` header the sign-in answered with (its flags).
    pub set_cookie: String,
}

impl<'a> DeskSession<'a> {
    /// Signs `user` in with the harness password; the sign-in must succeed.
    pub async fn open(server: &'a ServerProcess, user: &str) -> DeskSession<'a> {
        let reply = https_request_with(
            server,
            "POST",
            "/review/api/login",
            &[],
            Some(&serde_json::json!({ "user": user, "password": HARNESS_PASSWORD })),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let set_cookie = reply
            .header("set-cookie")
            .expect("a session cookie")
            .to_string();
        let cookie = set_cookie.split(';').next().unwrap_or_default().to_string();
        let csrf = reply.json()["csrf"]
            .as_str()
            .expect("a CSRF token")
            .to_string();
        DeskSession {
            server,
            cookie,
            csrf,
            set_cookie,
        }
    }

    /// A GET with the session cookie.
    pub async fn get(&self, path: &str) -> HttpReply {
        https_request_with(self.server, "GET", path, &[("Cookie", &self.cookie)], None).await
    }

    /// A POST with the session cookie and CSRF token.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> HttpReply {
        let headers = [
            ("Cookie", self.cookie.as_str()),
            ("X-CSRF-Token", self.csrf.as_str()),
        ];
        https_request_with(self.server, "POST", path, &headers, Some(&body)).await
    }

    /// The record view of `id`, which must answer 200.
    pub async fn record(&self, id: &str) -> serde_json::Value {
        let reply = self.get(&format!("/review/api/records/{id}")).await;
        assert_eq!(reply.status, 200, "{id}: {}", reply.body);
        reply.json()
    }

    /// The list rows for `query` (`""` or `?state=...`), which must answer 200.
    pub async fn rows(&self, query: &str) -> Vec<serde_json::Value> {
        let reply = self.get(&format!("/review/api/records{query}")).await;
        assert_eq!(reply.status, 200, "{query}: {}", reply.body);
        reply.json()["records"]
            .as_array()
            .cloned()
            .expect("a records array")
    }
}

/// What one HTTPS exchange answered.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The status line and headers.
    pub head: String,
    /// The body, de-chunked.
    pub body: String,
}

impl HttpReply {
    /// A header's value (name case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then_some(value.trim())
        })
    }

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One HTTPS request (HTTP/1.1, `Connection: close`) with an optional
/// bearer token and JSON body.
pub async fn https_request(
    server: &ServerProcess,
    method: &str,
    path: &str,
    token: Option<&str>,
    json: Option<&serde_json::Value>,
) -> HttpReply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    https_request_with(server, method, path, &headers, json).await
}

/// A TCP connection to the server from the loopback address `local`
/// (`127.0.0.2` and up work on Linux without any setup), so a test can be
/// several clients as the server counts them.
pub async fn tcp_connect_from(server: &ServerProcess, local: IpAddr) -> TcpStream {
    let socket = match local {
        IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("a TCP socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .unwrap_or_else(|e| panic!("bind to {local}: {e}"));
    tokio::time::timeout(FRAME_TIMEOUT, socket.connect(server.addr()))
        .await
        .expect("the TCP connection is made in time")
        .expect("TCP connect")
}

/// One HTTPS request with extra headers (cookies, CSRF tokens).
pub async fn https_request_with(
    server: &ServerProcess,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    https_exchange(server, None, method, path, headers, json).await
}

/// [`https_request_with`] from the loopback address `local`: the server
/// throttles and counts connections per address.
pub async fn https_request_from(
    server: &ServerProcess,
    local: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    https_exchange(server, Some(local), method, path, headers, json).await
}

async fn https_exchange(
    server: &ServerProcess,
    local: Option<IpAddr>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    json: Option<&serde_json::Value>,
) -> HttpReply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let tcp = match local {
            Some(local) => tcp_connect_from(server, local).await,
            None => TcpStream::connect(server.addr())
                .await
                .expect("TCP connect"),
        };
        let name = ServerName::try_from("localhost").expect("a server name");
        let mut tls = tls_connector(&server.ca_path())
            .connect(name, tcp)
            .await
            .expect("TLS handshake");
        let auth: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        let body = json.map(|j| j.to_string()).unwrap_or_default();
        let content = if json.is_some() || method != "GET" {
            format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )
        } else {
            String::new()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}{content}Connection: close\r\n\r\n{body}"
        );
        tls.write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut raw = Vec::new();
        let _ = tls.read_to_end(&mut raw).await;
        raw
    };
    let raw = tokio::time::timeout(FRAME_TIMEOUT, exchange)
        .await
        .expect("the server answers in time");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    HttpReply {
        status,
        head: head.to_string(),
        body,
    }
}

pub(crate) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The HTTP status the sync endpoint answers an upgrade with, given this
/// `Authorization` header (or none): 101 when it upgrades.
pub async fn upgrade_status(server: &ServerProcess, authorization: Option<&str>) -> u16 {
    let attempt = tokio::time::timeout(FRAME_TIMEOUT, upgrade(server, authorization))
        .await
        .expect("the upgrade is answered in time");
    match attempt {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("the upgrade failed without an HTTP answer: {other}"),
    }
}

/// The device id a token carries: tokens read `bz_<device id>_<secret>`.
pub fn device_of(token: &str) -> String {
    token
        .strip_prefix("bz_")
        .and_then(|rest| rest.split('_').next())
        .unwrap_or_default()
        .to_string()
}

/// A sync WebSocket driven by hand: the test decides every byte sent.
pub struct RawConnection {
    ws: Socket,
    device_id: String,
}

impl RawConnection {
    /// Connects as the device holding `token`.
    pub async fn open(server: &ServerProcess, token: &str) -> RawConnection {
        let bearer = format!("Bearer {token}");
        let ws = tokio::time::timeout(FRAME_TIMEOUT, upgrade(server, Some(&bearer)))
            .await
            .expect("the upgrade is answered in time")
            .expect("the server upgrades a device with a valid token");
        let device_id = device_of(token);
        RawConnection { ws, device_id }
    }

    /// The id of the device this connection authenticated as.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Sends one binary frame as is.
    pub async fn send_bytes(&mut self, frame: Vec<u8>) {
        tokio::time::timeout(FRAME_TIMEOUT, self.ws.send(WsMessage::binary(frame)))
            .await
            .expect("the frame is sent in time")
            .expect("send a frame");
    }

    /// Encodes and sends one protocol message.
    pub async fn send(&mut self, message: &Message) {
        let frame = codec::encode(message).expect("encode a message");
        self.send_bytes(frame).await;
    }

    /// Says hello as a new device (no store, cursor 0) and returns the
    /// server's welcome.
    pub async fn hello(&mut self) -> Welcome {
        self.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            store: None,
            cursor: 0,
            names: false,
        }))
        .await;
        match self.next_message().await {
            Some(Message::Welcome(welcome)) => welcome,
            other => panic!("expected a welcome, got {other:?}"),
        }
    }

    /// Waits on the catch-up stream for record `id` and returns it as the
    /// server holds it.
    pub async fn record_from_feed(&mut self, id: baraza_protocol::DocId) -> automerge::Automerge {
        loop {
            match self.next_message().await {
                Some(Message::Changes(c)) if c.doc == id => {
                    let mut doc = automerge::Automerge::new();
                    doc.load_incremental(&c.data)
                        .expect("the server's changes load");
                    return doc;
                }
                Some(_) => {}
                None => panic!("the server closed before sending the record"),
            }
        }
    }

    /// The server's next protocol message, or None once it has closed the
    /// connection. Fails the test if nothing arrives within
    /// [`FRAME_TIMEOUT`] or a frame does not decode.
    pub async fn next_message(&mut self) -> Option<Message> {
        loop {
            let next = tokio::time::timeout(FRAME_TIMEOUT, self.ws.next())
                .await
                .expect("the server answers (or closes) in time");
            match next {
                Some(Ok(WsMessage::Binary(bytes))) => {
                    return Some(
                        codec::decode(&bytes, &SERVER_FRAMES).unwrap_or_else(|e| {
                            panic!("the server sent an undecodable frame: {e}")
                        }),
                    )
                }
                Some(Ok(WsMessage::Close(_))) | None => return None,
                // A reset right after the close frame is still a close.
                Some(Err(_)) => return None,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Text(text))) => {
                    panic!("the server sent a text frame: {text:?}")
                }
            }
        }
    }

    /// The next message that is not feed traffic (`changes` and `cursor`
    /// messages carrying other devices' records), or None once closed.
    pub async fn next_reply(&mut self) -> Option<Message> {
        loop {
            match self.next_message().await {
                Some(Message::Changes(_) | Message::Cursor(_)) => {}
                other => return other,
            }
        }
    }

    /// The next reply must be an error frame; returns it.
    pub async fn expect_error(&mut self) -> ErrorMsg {
        match self.next_reply().await {
            Some(Message::Error(error)) => error,
            other => panic!("expected an error frame, got {other:?}"),
        }
    }

    /// The server must close the connection without another reply.
    pub async fn expect_closed(&mut self) {
        if let Some(message) = self.next_reply().await {
            panic!("expected the server to close the connection, got {message:?}");
        }
    }
}
