//! A real `baraza-server` process on a data directory, and the server's
//! own commands (`user add`, `device add`, `audit export`) run against
//! that directory: the piece every end-to-end test starts from. Starting,
//! restarting, SIGKILL and SIGTERM are here because they are the faults
//! only a real process has.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{binary, run_bounded, sibling, wait_bounded};

/// How long a server may take to announce its address.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// A `baraza-server serve` process on a data directory. Dropping it kills
/// the process, so a failed assertion leaves nothing running.
pub struct ServerProcess {
    data: PathBuf,
    config: Option<PathBuf>,
    /// `--store`, for the server and every command run on its behalf;
    /// None for the embedded default.
    store: Option<String>,
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

    /// Starts a server whose data lives in the PostgreSQL database at
    /// `url` (see [`postgres_database`]); `data` still holds its TLS
    /// certificate and admin socket.
    pub fn start_on_postgres(data: &Path, url: &str) -> ServerProcess {
        ServerProcess::launch_on(data, None, Some(url.to_string()))
    }

    fn launch(data: &Path, config: Option<PathBuf>) -> ServerProcess {
        ServerProcess::launch_on(data, config, store_for(data))
    }

    fn launch_on(data: &Path, config: Option<PathBuf>, store: Option<String>) -> ServerProcess {
        let mut server = ServerProcess::unstarted(data, config, store);
        server.spawn();
        server
    }

    fn unstarted(data: &Path, config: Option<PathBuf>, store: Option<String>) -> ServerProcess {
        ServerProcess {
            data: data.to_path_buf(),
            config,
            store,
            log: sibling(data, "log"),
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!(
                "the server did not announce its address within {STARTUP_TIMEOUT:?}; \
                 log:\n{log}"
            );
        }
    }

    /// Starts the process and waits for its address; its log if it ends
    /// or stays silent instead.
    fn try_spawn(&mut self) -> Result<(), String> {
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
        command.args(self.store_args());
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
                        return Ok(());
                    }
                }
                Err(_) => {
                    // Ended (stdout closed) or silent: either way not serving.
                    if let Some(mut child) = self.child.take() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    return Err(self.log());
                }
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

    /// `--store URL` when the server is not on the embedded default.
    fn store_args(&self) -> Vec<&str> {
        match &self.store {
            Some(url) => vec!["--store", url],
            None => Vec::new(),
        }
    }

    /// Runs `baraza-server ARGS` on this server's data directory and
    /// store, as [`run_server_command`] does.
    pub fn command(&self, args: &[&str], stdin: &str) -> Output {
        run_server_command_on(&self.data, self.store.as_deref(), args, stdin)
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
        let output = self.command(&args, &format!("{HARNESS_PASSWORD}\n"));
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
                .args(["device", "add", "--name", name, "--user", user])
                .args(self.store_args())
                .arg("--data")
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

    /// True when this server keeps its data in PostgreSQL
    /// (`BARAZA_TEST_STORE=postgres`), not in sled and files.
    pub fn on_postgres(&self) -> bool {
        store_for(self.data_dir()).is_some()
    }

    /// The audit log, through `baraza-server audit export`, one JSON value
    /// per entry.
    pub fn audit_entries(&self) -> Vec<serde_json::Value> {
        let out = self.command(&["audit", "export"], "");
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
        "BARAZA_STORE",
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

/// What [`pin_to_sled`] notes beside a data directory.
const SLED_PIN: &str = "sled";

/// Keeps the servers and commands of `data` on sled whatever
/// `BARAZA_TEST_STORE` says: for a test that reads or damages sled's own
/// files. Call it before anything else uses `data`.
pub fn pin_to_sled(data: &Path) {
    let noted = sibling(data, "store");
    std::fs::create_dir_all(noted.parent().unwrap_or(Path::new(".")))
        .expect("make the data directory's parent");
    std::fs::write(noted, SLED_PIN).expect("pin the data directory to sled");
}

/// The backend tests of `data` run on. With `BARAZA_TEST_STORE=postgres`
/// (`scripts/test` runs the end-to-end tests once so and once without),
/// every data directory gets a database of its own, noted beside it so
/// that every server and command on that directory uses the same one;
/// otherwise the embedded default.
fn store_for(data: &Path) -> Option<String> {
    if std::env::var("BARAZA_TEST_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    let noted = sibling(data, "store");
    if let Ok(url) = std::fs::read_to_string(&noted) {
        return (url != SLED_PIN).then_some(url);
    }
    let url = postgres_database();
    std::fs::create_dir_all(noted.parent().unwrap_or(Path::new(".")))
        .expect("make the data directory's parent");
    std::fs::write(&noted, &url).expect("note the test database");
    Some(url)
}

/// Runs `baraza-server ARGS --data DATA` with `stdin` as its input (for the
/// `user`, `device` and `audit` commands) and returns its output.
pub fn run_server_command(data: &Path, args: &[&str], stdin: &str) -> Output {
    run_server_command_on(data, store_for(data).as_deref(), args, stdin)
}

fn run_server_command_on(data: &Path, store: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut command = server_command();
    if let Some(url) = store {
        command.env("BARAZA_STORE", url);
    }
    let mut child = command
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

/// The URL of a new, empty database in the test PostgreSQL cluster that
/// `scripts/with-postgres` starts (`scripts/test` runs every test beside
/// one), made with its `psql`.
pub fn postgres_database() -> String {
    let cluster = std::env::var("BARAZA_TEST_PG").expect(
        "BARAZA_TEST_PG is not set: run the tests through scripts/test, \
         or as `scripts/with-postgres cargo test ...`",
    );
    let name = format!("e2e_{:016x}", rand::random::<u64>());
    let output = run_bounded(
        Command::new("psql")
            .arg(&cluster)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE {name}")),
        Duration::from_secs(30),
    );
    assert!(
        output.status.success(),
        "could not create a test database: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (server, _) = cluster
        .rsplit_once('/')
        .expect("BARAZA_TEST_PG ends in a database name");
    format!("{server}/{name}")
}

/// The device id a token carries: tokens read `bz_<device id>_<secret>`.
pub fn device_of(token: &str) -> String {
    token
        .strip_prefix("bz_")
        .and_then(|rest| rest.split('_').next())
        .unwrap_or_default()
        .to_string()
}
