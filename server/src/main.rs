//! `baraza-server`: runs the sync server (`serve`) or administers devices
//! (`device add|list|revoke`). All logic lives in the library; this file
//! wires it together and turns errors into exit codes.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use baraza_server::admin::{self, AdminReply, AdminRequest, AdminServer};
use baraza_server::api::{self, AppState};
use baraza_server::config::{
    self, AuditCommand, Cli, Command, DeviceCommand, ServeConfig, UserCommand,
};
use baraza_server::engine::hub::SyncHub;
use baraza_server::identity::devices::DeviceRegistry;
use baraza_server::net::tls;
use baraza_server::storage::data_dir::DataDir;
use baraza_server::storage::StoreChoice;

/// Errors are printed with their causes on one line (`{:#}`), not as
/// anyhow's `Debug` form: that adds a backtrace whenever `RUST_BACKTRACE`
/// is set, which buries the one sentence an operator needs.
fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of standard output went away (`user list | head`):
        // what it wanted it has, and nobody is left to read an error.
        Err(error) if StdoutFailed::is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Standard output whose failures say they are standard output's, so a
/// reader that went away is told apart from, say, a broken admin socket.
struct Stdout(std::io::Stdout);

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(StdoutFailed::wrap)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().map_err(StdoutFailed::wrap)
    }
}

/// Standard output for `check`: once its reader has gone, what is written
/// is dropped, and the check goes on to its verdict and exit status.
struct Unread(std::io::Stdout);

impl Write for Unread {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(buf.len()),
            other => other,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.flush() {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other,
        }
    }
}

/// The cause inside an `io::Error` from [`Stdout`].
#[derive(Debug)]
struct StdoutFailed(std::io::Error);

impl std::fmt::Display for StdoutFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutFailed {}

impl StdoutFailed {
    fn wrap(e: std::io::Error) -> std::io::Error {
        std::io::Error::new(e.kind(), StdoutFailed(e))
    }

    fn is_broken_pipe(error: &anyhow::Error) -> bool {
        error.chain().any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
                io.kind() == std::io::ErrorKind::BrokenPipe
                    && io.get_ref().is_some_and(|inner| inner.is::<StdoutFailed>())
            })
        })
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = ServeConfig::resolve(&args)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Device { command } => device(command),
        Command::User { command } => user(command),
        Command::Record {
            command: config::RecordCommand::Erase { common, id },
        } => {
            let (root, store) = place(&common)?;
            print_reply(admin::run_command(
                &root,
                &store,
                AdminRequest::RecordErase { id },
            )?)
        }
        Command::Record {
            command:
                config::RecordCommand::Quarantine {
                    common,
                    id,
                    reason,
                    lift,
                },
        } => {
            let (root, store) = place(&common)?;
            let reason = if lift { None } else { reason };
            print_reply(admin::run_command(
                &root,
                &store,
                AdminRequest::RecordQuarantine { id, reason },
            )?)
        }
        Command::Audit { command } => audit(command),
        Command::Migrate { from_data, to } => migrate(&from_data, &to),
        Command::Check { common, repair } => {
            let (root, store) = place(&common)?;
            check(&root, &store, repair)
        }
    }
}

/// The data directory and the backend an admin command works on.
fn place(common: &config::CommonArgs) -> anyhow::Result<(std::path::PathBuf, StoreChoice)> {
    Ok((
        config::resolve_data_dir(common)?,
        config::resolve_store(common)?,
    ))
}

/// `baraza-server migrate`: the data directory checked whole first (a
/// damaged one is refused, nothing copied), then copied and the copy
/// checked against it.
fn migrate(from: &std::path::Path, to: &str) -> anyhow::Result<()> {
    use baraza_server::storage::integrity::{full_check, Anchor};
    let Some(StoreChoice::Postgres(url)) = StoreChoice::parse(to) else {
        bail!("--to must be a postgres:// URL of an empty database");
    };
    if !from.join("db").is_dir() {
        bail!("{} holds no server data (no db directory)", from.display());
    }
    let data = DataDir::create(from)?;
    let storage = baraza_server::storage::sled::open(&data)?;
    let audit = baraza_server::storage::audit::AuditLog::new(storage.audit.clone());
    let vouched = Anchor::read(&Anchor::path_in(from))?;
    let problems = full_check(&*storage.docs, &audit, vouched.as_ref());
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("DAMAGED {}: {}", p.what, p.how);
        }
        bail!(
            "the data directory is damaged; nothing was copied. Run `baraza-server check --data {}` \
             and see README's recovery section",
            from.display()
        );
    }
    let clean = storage.docs.opened_clean();
    if !clean {
        eprintln!(
            "note: the server was not stopped cleanly; tablets will offer what they hold once \
             at their next sync (nothing is lost)"
        );
    }
    let copied = baraza_server::storage::postgres::import::import(&storage, &url)?;
    if clean {
        storage.docs.close_cleanly()?;
    }
    storage.flush()?;
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "migrated and checked: {} records, feed at {}, {} users, {} devices, audit log of {} entries",
        copied.records, copied.feed, copied.users, copied.devices, copied.audit
    )?;
    Ok(())
}

/// `baraza-server check`: the full offline scan, and the repair if asked.
fn check(root: &std::path::Path, store: &StoreChoice, repair: bool) -> anyhow::Result<()> {
    use baraza_server::storage::integrity::{full_check, Anchor, AnchorState};
    let data = DataDir::create(root)?;
    let storage = baraza_server::storage::open(store, &data)?;
    // Only sled keeps an anchor (see `open_hub`).
    let anchored = *store == StoreChoice::Sled;
    let audit = baraza_server::storage::audit::AuditLog::new(storage.audit.clone());
    let store = &*storage.docs;
    let anchor_path = Anchor::path_in(root);
    let vouched = match Anchor::read(&anchor_path) {
        _ if !anchored => None,
        Ok(v) => v,
        Err(err) => {
            eprintln!("anchor: {err}");
            None
        }
    };
    let mut problems = full_check(store, &audit, vouched.as_ref());
    problems.extend(baraza_server::storage::integrity::attachment_check(
        &*storage.attachments,
    ));
    // A reader that goes away (`check | head`) must not stop a repair half
    // done nor turn a damaged verdict into success: its lines are dropped.
    let mut stdout = Unread(std::io::stdout());
    for p in &problems {
        writeln!(stdout, "DAMAGED {}: {}", p.what, p.how)?;
        if let Some(fix) = &p.repair {
            writeln!(stdout, "  a repair would: {fix}")?;
        }
    }
    if problems.is_empty() {
        writeln!(
            stdout,
            "intact: {} records, feed at {}, audit log at entry {}",
            store.doc_count()?,
            store.feed_watermark()?,
            audit.last()?.0
        )?;
    } else if repair {
        for p in &problems {
            if let (Some(id), Some(_)) = (p.what.strip_prefix("record "), &p.repair) {
                if let Ok(doc) = id.parse() {
                    store.quarantine(doc, &format!("damaged: {}", p.how))?;
                }
            }
        }
        let found: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        audit.append("integrity_repair", serde_json::json!({ "problems": found }))?;
        let (audit_seq, audit_hash) = audit.last()?;
        if anchored {
            Anchor::open(
                &anchor_path,
                AnchorState {
                    feed: store.feed_watermark()?,
                    audit_seq,
                    audit_hash,
                },
            )?;
        }
        writeln!(
            stdout,
            "repaired: damaged records quarantined, the database accepted as it now is; \
             tablets re-offer what they hold at their next sync"
        )?;
    } else {
        writeln!(
            stdout,
            "{} problems; restore the data directory from a backup, or run again with --repair \
             (see README's recovery section)",
            problems.len()
        )?;
    }
    // A check that found the store cleanly stopped leaves it so; a repair
    // does not, so tablets re-offer what they hold and heal what was lost.
    if store.opened_clean() && (!repair || problems.is_empty()) {
        store.close_cleanly()?;
    }
    storage.flush()?;
    if problems.is_empty() || repair {
        Ok(())
    } else {
        bail!("the data directory is damaged")
    }
}

/// Logs go to stderr so that stdout carries only what scripts read: the
/// `listening on` line and the token printed by `device add`. Colours only
/// on a terminal, so log files and journald get plain text.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    baraza_server::engine::hub::report_contained_panics();
    let data = DataDir::create(&config.data)?;
    let storage = baraza_server::storage::open(&config.store, &data)?;
    tracing::info!(store = %config.store.redacted(), "storage open");
    let mut devices = DeviceRegistry::new(storage.devices.clone());
    if let Some(secs) = config.access.token_lifetime_secs {
        devices = devices.with_token_lifetime(secs);
    }
    let hub = open_hub(
        &storage,
        &config,
        &baraza_server::storage::integrity::Anchor::path_in(data.root()),
    )?;
    if config.access.skip_write_rules_for_benchmarks {
        hub.set_skip_write_rules(true);
    }
    hub.set_clock_ahead_max_ms(config.records.clock_ahead_max_ms_or_default());
    hub.set_session_idle(config.connections.session_idle);
    hub.start_filling_summaries()?;
    if let Some(notices) = storage.backend.listen() {
        hub.follow_other_nodes(notices, devices.clone())?;
    }
    let tls = tls::server_config(config.tls.as_ref(), &data.tls_dir())?;
    if config.tls.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(
            "listening on {} with the development certificate, which is only valid for {}; \
             remote devices will reject it (pass --tls-cert and --tls-key)",
            config.listen,
            tls::DEV_CERT_NAMES.join(", ")
        );
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;

    // Signal handlers go in before the address is announced: whoever reads
    // it may send SIGTERM at once, and an unhandled SIGTERM kills the
    // process without flushing.
    let shutdown = shutdown_signal()?;

    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    // Without the admin socket the server still syncs; only `device`
    // commands are unavailable while it runs, so this is not fatal.
    let users = baraza_server::identity::users::UserRegistry::new(
        storage.users.clone(),
        storage.throttles.clone(),
    );
    let registries = admin::Registries {
        devices: devices.clone(),
        users: users.clone(),
        audit: hub.audit().clone(),
        records: admin::Records::Live(hub.clone()),
    };
    let admin_task = match AdminServer::bind(&data, registries) {
        Ok(admin) => {
            let mut stopped = admin_stopped.clone();
            Some(tokio::spawn(admin.run(async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            })))
        }
        Err(error) => {
            tracing::warn!(
                error = &error as &dyn std::error::Error,
                "admin socket unavailable; device commands will fail while the server runs"
            );
            None
        }
    };

    tracing::info!("baraza-server listening on https://{addr}");
    // Plain standard output: a server that cannot say where it listens
    // stops with an error, even if the reader is the one that went away.
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {addr}")?;
    stdout.flush()?;

    let review_sessions = baraza_server::api::review::Sessions::new(storage.sessions.clone());
    let attachments = std::sync::Arc::new(baraza_server::engine::attachments::Attachments::new(
        hub.clone(),
        storage.attachments.clone(),
        config.attachments.limits(),
    ));
    attachments.start_collecting(
        config.attachments.garbage_grace(),
        config.attachments.garbage_every(),
    )?;
    let state = AppState {
        attachments,
        review_sessions,
        hub: hub.clone(),
        devices: devices.clone(),
        limits: config.limits,
        users,
    };
    baraza_server::net::serve(
        listener,
        tls,
        move |slots, stop_rx| api::service(state, slots, stop_rx),
        config.connections,
        shutdown,
    )
    .await;
    let served = tokio::task::spawn_blocking(move || hub.flush()).await;
    if let Ok(Ok(())) = served {
        tracing::info!("sync hub flushed");
    }

    let _ = stop_admin.send(true);
    if let Some(task) = admin_task {
        if let Err(error) = task.await {
            tracing::warn!(%error, "admin socket task failed");
        }
    }
    devices.flush()?;
    tokio::task::spawn_blocking(move || storage.flush())
        .await?
        .context("cannot flush the database")?;
    served??;
    tracing::info!("stopped");
    Ok(())
}

/// The one place the sync hub is opened, so that passing it more settings
/// (such as `config.limits`) is a one-line change.
fn open_hub(
    storage: &baraza_server::storage::Storage,
    config: &ServeConfig,
    anchor: &std::path::Path,
) -> anyhow::Result<std::sync::Arc<SyncHub>> {
    // The anchor stands guard over sled, whose recovery can drop a
    // damaged log tail without a word; PostgreSQL keeps its own log.
    let anchor = (config.store == StoreChoice::Sled).then_some(anchor);
    SyncHub::open_checked(
        storage,
        config.limits.protocol_limits(),
        baraza_server::engine::hub::CACHE_DOCS_DEFAULT,
        anchor,
    )
}

/// Registers SIGTERM and SIGINT (Ctrl-C) handlers now and returns a future
/// that completes on the first of them.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("{name} received, shutting down");
    })
}

fn device(command: DeviceCommand) -> anyhow::Result<()> {
    let (common, request) = match command {
        DeviceCommand::Add { common, name, user } => {
            (common, AdminRequest::DeviceAdd { name, user })
        }
        DeviceCommand::Retire { common, id } => (common, AdminRequest::DeviceRetire { id }),
        DeviceCommand::List { common } => (common, AdminRequest::DeviceList),
        DeviceCommand::Revoke { common, id } => (common, AdminRequest::DeviceRevoke { id }),
    };
    let (root, store) = place(&common)?;
    print_reply(admin::run_command(&root, &store, request)?)
}

fn user(command: UserCommand) -> anyhow::Result<()> {
    let (common, request) = match command {
        UserCommand::Add {
            common,
            name,
            role,
            areas,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .context("cannot read the password from standard input")?;
            let password = password.trim_end_matches(['\r', '\n']).to_string();
            (
                common,
                AdminRequest::UserAdd {
                    name,
                    role,
                    areas,
                    password,
                },
            )
        }
        UserCommand::List { common } => (common, AdminRequest::UserList),
        UserCommand::Disable { common, name } => (
            common,
            AdminRequest::UserDisable {
                name,
                disabled: true,
            },
        ),
        UserCommand::Enable { common, name } => (
            common,
            AdminRequest::UserDisable {
                name,
                disabled: false,
            },
        ),
        UserCommand::Areas {
            common,
            name,
            areas,
        } => (common, AdminRequest::UserAreas { name, areas }),
        UserCommand::Release { common, name } => (common, AdminRequest::UserRelease { name }),
    };
    let (root, store) = place(&common)?;
    print_reply(admin::run_command(&root, &store, request)?)
}

fn audit(command: AuditCommand) -> anyhow::Result<()> {
    let (common, request) = match command {
        AuditCommand::Verify { common } => (common, AdminRequest::AuditVerify),
        AuditCommand::Export { common } => (common, AdminRequest::AuditExport),
    };
    let (root, store) = place(&common)?;
    let verifying = matches!(request, AdminRequest::AuditVerify);
    let reply = admin::run_command(&root, &store, request)?;
    // The chain first (it names the entry where it breaks), then whether
    // it still reaches the last entry written. Only sled keeps an anchor:
    // PostgreSQL's own log is what stands behind a committed entry.
    if verifying
        && store == StoreChoice::Sled
        && matches!(reply, AdminReply::AuditVerdict { intact: true, .. })
    {
        audit_reaches_anchor(&root)?;
    }
    print_reply(reply)
}

/// A chain that verifies may still have lost its newest entries (a
/// truncated or rolled-back database): the anchor beside it names the last
/// entry written, which must still be there, unchanged.
fn audit_reaches_anchor(root: &std::path::Path) -> anyhow::Result<()> {
    let store = StoreChoice::Sled;
    use baraza_server::storage::integrity::Anchor;
    let Some(anchor) = Anchor::read(&Anchor::path_in(root))? else {
        return Ok(());
    };
    if anchor.audit_seq == 0 {
        return Ok(());
    }
    let AdminReply::AuditEntries { entries } =
        admin::run_command(root, &store, AdminRequest::AuditExport)?
    else {
        bail!("could not read the audit log");
    };
    let last = entries.last().map_or(0, |e| e.seq);
    match entries.iter().find(|e| e.seq == anchor.audit_seq) {
        Some(e) if e.hash == anchor.audit_hash => Ok(()),
        Some(_) => bail!(
            "audit log broken at entry {}: it is not the entry that was written",
            anchor.audit_seq
        ),
        None => bail!(
            "audit log broken: it ends at entry {last}, but entry {} was written (entries are missing)",
            anchor.audit_seq
        ),
    }
}

fn print_reply(reply: AdminReply) -> anyhow::Result<()> {
    let mut stdout = Stdout(std::io::stdout());
    match reply {
        AdminReply::AuditVerdict { intact, at, reason } => {
            if intact {
                writeln!(stdout, "audit log intact: {at} entries")?;
            } else {
                bail!("audit log broken at entry {at}: {reason}");
            }
        }
        AdminReply::AuditEntries { entries } => {
            for entry in entries {
                writeln!(stdout, "{}", serde_json::to_string(&entry)?)?;
            }
        }
        AdminReply::User { user } => {
            writeln!(
                stdout,
                "{}\t{:?}\t{}\t{}",
                user.name,
                user.role,
                user.areas.join(","),
                if user.locked {
                    "locked"
                } else if user.disabled {
                    "disabled"
                } else {
                    "active"
                }
            )?;
        }
        AdminReply::Users { users } => {
            writeln!(stdout, "NAME\tROLE\tAREAS\tSTATUS")?;
            for user in users {
                let status = if user.locked {
                    "locked"
                } else if user.disabled {
                    "disabled"
                } else {
                    "active"
                };
                writeln!(
                    stdout,
                    "{}\t{:?}\t{}\t{status}",
                    user.name,
                    user.role,
                    user.areas.join(",")
                )?;
            }
        }
        AdminReply::DeviceAdded { id, name, token } => {
            eprintln!("added device {id} ({name}); its token follows and will not be shown again");
            writeln!(stdout, "{token}")?;
        }
        AdminReply::Devices { devices } => {
            writeln!(stdout, "ID\tCREATED_AT\tSTATUS\tUSER\tNAME")?;
            for device in devices {
                writeln!(
                    stdout,
                    "{}\t{}\t{}\t{}\t{}",
                    device.id,
                    device.created_at,
                    device.state(),
                    device.user.as_deref().unwrap_or("-"),
                    device.name
                )?;
            }
        }
        AdminReply::DeviceRevoked { id } => eprintln!("revoked device {id}"),
        AdminReply::RecordQuarantined { id, lifted: false } => {
            eprintln!("record {id} is quarantined: devices are told it is held back, pushes to it are refused");
        }
        AdminReply::RecordQuarantined { id, lifted: true } => {
            eprintln!(
                "record {id} is no longer quarantined; devices receive it at their next sync"
            );
        }
        AdminReply::RecordErased { id } => {
            eprintln!("erased record {id}; devices delete it at their next sync")
        }
        AdminReply::DeviceRetiring { id } => {
            eprintln!(
                "device {id} will upload what the server lacks and wipe at its next connection"
            )
        }
        AdminReply::Error { message } => bail!("{message}"),
    }
    stdout.flush()?;
    Ok(())
}
