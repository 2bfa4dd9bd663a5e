//! Command line and configuration: the `clap` definitions of every
//! subcommand, the TOML file format, and [`ServeConfig`], the resolved
//! settings `serve` runs with.
//!
//! Each setting comes from the first of: command-line flag, environment
//! variable (`BARAZA_*`, handled by clap), config file (`--config`), built-in
//! default. [`ServeConfig::merge`] is the pure part of that and is what the
//! tests exercise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::storage::StoreChoice;
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

/// Data directory used when no flag, variable or file names one.
pub const DATA_DEFAULT: &str = "./baraza-data";
/// Listen address used when no flag, variable or file names one.
pub const LISTEN_DEFAULT: &str = "127.0.0.1:8443";
/// Largest sync frame when `[limits] frame_bytes_max` is not set.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 8 * 1024 * 1024;
/// Open connections (TLS handshakes, HTTP exchanges and sync sessions
/// together) when `connections_max` is not set.
pub const CONNECTIONS_MAX_DEFAULT: usize = 4096;
/// Open connections from one client address (an IPv4 address or an IPv6
/// /64) that have not become sync sessions, when
/// `connections_per_address_max` is not set. A station's tablets may share
/// one address behind its router, so this is well above one tablet's needs.
pub const CONNECTIONS_PER_ADDRESS_MAX_DEFAULT: usize = 64;
/// Time from accepting a connection to the end of its TLS handshake, in
/// milliseconds, when `handshake_timeout_ms` is not set.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Time a connection may take to send the headers of its first request
/// after the handshake, or of its next request on a kept-alive connection,
/// in milliseconds, when `idle_timeout_ms` is not set.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Time from accepting a connection during which it may stay silent (no
/// complete first request) and still keep its slot when every slot is
/// wanted, in milliseconds, when `first_request_grace_ms` is not set. A
/// tablet on 2G needs a few round trips of a second or so for the handshake
/// and its first request; a connection silent for longer is more likely a
/// flood than a tablet, and gives way to clients waiting for a slot.
pub const FIRST_REQUEST_GRACE_MS_DEFAULT: u64 = 5_000;
/// Time a sync session may go without a frame or a ping from its device
/// before the server closes it, in milliseconds, when `session_idle_ms` is
/// not set. Halfway through, the server pings, and a tablet that is there
/// answers; the SDK itself pings after 30 s of silence.
pub const SESSION_IDLE_MS_DEFAULT: u64 = 300_000;
/// Largest config file we read; a config file is a few hundred bytes, so
/// anything bigger is a mistake (a database or a device file passed by error).
const CONFIG_FILE_BYTES_MAX: u64 = 1024 * 1024;

/// Failures resolving the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file named by `--config` or `BARAZA_CONFIG`.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: std::io::Error,
    },
    /// The config file is larger than any sensible config file.
    #[error("config file {path} is larger than {CONFIG_FILE_BYTES_MAX} bytes")]
    TooLarge {
        /// The offending file.
        path: PathBuf,
    },
    /// The config file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}")]
    Parse {
        /// The offending file.
        path: PathBuf,
        /// The parser's description, with line and column.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The `listen` value in the config file is not an `IP:PORT` address.
    #[error("invalid listen address {value:?} in config file (expected IP:PORT)")]
    Listen {
        /// The value as written.
        value: String,
    },
    /// The store is neither `sled` nor a PostgreSQL URL. Not quoted: a
    /// mistyped URL may hold a password.
    #[error("--store must be `sled` or a postgres:// URL")]
    Store,
    /// Only one of the TLS certificate and key was given.
    #[error("--tls-cert and --tls-key must be given together (or neither, for a development certificate)")]
    TlsHalf,
    /// A limit was set to zero, which would refuse every message.
    #[error("[limits] {name} must be greater than zero")]
    ZeroLimit {
        /// The key in the `[limits]` table.
        name: &'static str,
    },
    /// A `[records]` setting was set to zero.
    #[error("[records] {name} must be greater than zero")]
    ZeroRecordsSetting {
        /// The key in the `[records]` table.
        name: &'static str,
    },
    /// An `[attachments]` setting was set to zero, which would refuse
    /// every attachment.
    #[error("[attachments] {name} must be greater than zero")]
    ZeroAttachmentsSetting {
        /// The key in the `[attachments]` table.
        name: &'static str,
    },
    /// A connection setting was set to zero, which would refuse or cut off
    /// every connection.
    #[error("{name} must be greater than zero")]
    ZeroConnectionSetting {
        /// The key in the `[connections]` table (the flag is the same name
        /// with dashes).
        name: &'static str,
    },
}

/// `baraza-server`: the Baraza sync server and its administration commands.
#[derive(Debug, Parser)]
#[command(name = "baraza-server", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync server.
    Serve(ServeArgs),
    /// Manage the devices allowed to sync.
    Device {
        /// What to do with devices.
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Erase restricted records.
    Record {
        /// What to do with records.
        #[command(subcommand)]
        command: RecordCommand,
    },
    /// Copy a stopped server's sled data directory into a new, empty
    /// PostgreSQL database (records with their whole history at the same
    /// feed positions, the store id, users, devices, the audit chain),
    /// then check the copy against it before saying done. Tablets that
    /// synced with the old server then reconcile with the new one without
    /// sending everything again.
    Migrate {
        /// The data directory to copy (its server stopped).
        #[arg(long, value_name = "DIR")]
        from_data: PathBuf,
        /// The database to copy into, empty: `postgres://USER@HOST/DB`
        /// (the password from the URL or `PGPASSWORD`).
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Check the whole data directory offline (the server must be
    /// stopped): every record decodes and matches its heads, the feed has no
    /// holes, index and access rows agree, the audit chain verifies and
    /// the database reaches its anchor. Says what a repair would do; exits
    /// non-zero if anything is damaged.
    Check {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Carry out the repair: quarantine damaged records and accept the
        /// database as it now is (audited). Restore a backup first if you
        /// have one: what is missing is then lost.
        #[arg(long)]
        repair: bool,
    },
    /// Manage users: roles, areas, passwords, locked accounts.
    User {
        /// What to do with users.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check or export the audit log.
    Audit {
        /// What to do with the log.
        #[command(subcommand)]
        command: AuditCommand,
    },
}

/// `record` subcommands.
#[derive(Debug, Subcommand)]
pub enum RecordCommand {
    /// Erase a record of a complainant's contact details: removed from the
    /// server, and from every device at its next sync.
    Erase {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// The record id.
        #[arg(long)]
        id: String,
    },
    /// Hold a record back from every device and reader (one bad record must
    /// not block a feed); `--lift` releases it. Its stored bytes are kept.
    Quarantine {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// The record id.
        #[arg(long)]
        id: String,
        /// Why, for the audit log (required unless lifting).
        #[arg(long, required_unless_present = "lift")]
        reason: Option<String>,
        /// Release the record instead.
        #[arg(long, conflicts_with = "reason")]
        lift: bool,
    },
}

/// `audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Check every entry and the hash chain; exits non-zero if the log was
    /// edited or an entry removed.
    Verify {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Write the log as JSON lines on standard output.
    Export {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// `user` subcommands; like `device`, they work with or without a running
/// server on the data directory.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from standard input (one line).
    Add {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Login name.
        #[arg(long)]
        name: String,
        /// officer, liaison, supervisor or admin.
        #[arg(long)]
        role: String,
        /// An area the user works in; repeatable.
        #[arg(long = "area")]
        areas: Vec<String>,
    },
    /// List users (never passwords or hashes).
    List {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Disable a user: logins are refused.
    Disable {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Re-enable a disabled user.
    Enable {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Login name.
        #[arg(long)]
        name: String,
    },
    /// Replace a user's areas.
    Areas {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Login name.
        #[arg(long)]
        name: String,
        /// An area; repeatable.
        #[arg(long = "area")]
        areas: Vec<String>,
    },
    /// Release an account locked after repeated failed logins.
    Release {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// Login name.
        #[arg(long)]
        name: String,
    },
}

/// `device` subcommands. They work whether or not a server is running on the
/// data directory (through its admin socket if one is).
#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Register a device and print its token (shown only this once).
    Add {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// A human-readable name, e.g. "Kibera station tablet 3".
        #[arg(long)]
        name: String,
        /// The user the device acts for: their role and areas decide what
        /// it may read and change.
        #[arg(long)]
        user: String,
    },
    /// List registered devices (never their tokens).
    List {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
    },
    /// End a lost or stolen device at once: its sessions are cut with
    /// `revoked`, and it wipes its store without uploading.
    Revoke {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// The device id, as printed by `device add` or `device list`.
        #[arg(long)]
        id: String,
    },
    /// Retire a device handed back: at its next connection it uploads what
    /// the server lacks, then wipes itself.
    Retire {
        /// Where the data directory is.
        #[command(flatten)]
        common: CommonArgs,
        /// The device id.
        #[arg(long)]
        id: String,
    },
}

/// Settings shared by every subcommand.
#[derive(Debug, Clone, Default, Args)]
pub struct CommonArgs {
    /// Data directory [default: ./baraza-data]
    #[arg(long, env = "BARAZA_DATA", value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Where records, users, devices and the audit log are kept: `sled` (in the data directory) or `postgres://USER@HOST[:PORT]/DB` (the password from PGPASSWORD or the URL) [default: sled]
    #[arg(long, env = "BARAZA_STORE", value_name = "URL", hide_env_values = true)]
    pub store: Option<String>,
    /// TOML config file with keys data, store, listen, tls_cert, tls_key and [limits], [access], [connections] and [records] tables.
    #[arg(long, env = "BARAZA_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `serve` flags, before merging with the config file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Data directory and config file.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Address to listen on, IP:PORT (port 0 picks a free port) [default: 127.0.0.1:8443]
    #[arg(long, env = "BARAZA_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain; without it a development CA and certificate are generated.
    #[arg(long, env = "BARAZA_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "BARAZA_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Connection limits and deadlines.
    #[command(flatten)]
    pub connections: ConnectionsArgs,
}

/// Connection flags, before merging with the config file's `[connections]`
/// table (same names, with underscores).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct ConnectionsArgs {
    /// Open connections at most, sync sessions included [default: 4096]
    #[arg(long, env = "BARAZA_CONNECTIONS_MAX", value_name = "N")]
    pub connections_max: Option<usize>,
    /// Open connections from one address (IPv4, or IPv6 /64), not counting sync sessions; more are closed at once [default: 64]
    #[arg(long, env = "BARAZA_CONNECTIONS_PER_ADDRESS_MAX", value_name = "N")]
    pub connections_per_address_max: Option<usize>,
    /// Milliseconds from accepting a connection to the end of its TLS handshake [default: 10000]
    #[arg(long, env = "BARAZA_HANDSHAKE_TIMEOUT_MS", value_name = "MS")]
    pub handshake_timeout_ms: Option<u64>,
    /// Milliseconds a connection may wait before the headers of its first request, or of its next one when kept alive [default: 30000]
    #[arg(long, env = "BARAZA_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Milliseconds after accepting during which a connection that has sent no request keeps its slot when every slot is wanted; older silent ones are closed for waiting clients [default: 5000]
    #[arg(long, env = "BARAZA_FIRST_REQUEST_GRACE_MS", value_name = "MS")]
    pub first_request_grace_ms: Option<u64>,
    /// Milliseconds a sync session may go without a frame or a ping from its device before it is closed [default: 300000]
    #[arg(long, env = "BARAZA_SESSION_IDLE_MS", value_name = "MS")]
    pub session_idle_ms: Option<u64>,
}

/// The config file as written. Unknown keys are errors: a misspelt limit
/// silently ignored would leave the server running with the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Data directory.
    pub data: Option<PathBuf>,
    /// `sled` or a `postgres://` URL.
    pub store: Option<String>,
    /// Listen address, IP:PORT.
    pub listen: Option<String>,
    /// PEM certificate chain.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Protocol limits, handed to the sync hub.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Device tokens and access checks.
    #[serde(default)]
    pub access: AccessConfig,
    /// Connection limits and deadlines.
    #[serde(default)]
    pub connections: ConnectionsFileConfig,
    /// How records are judged on arrival.
    #[serde(default)]
    pub records: RecordsConfig,
    /// `[attachments]`: sizes, media types and chunks of attachments.
    #[serde(default)]
    pub attachments: AttachmentsConfig,
}

/// The `[attachments]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachmentsConfig {
    /// Bytes one attachment may hold (default 32 MiB).
    pub size_max_bytes: Option<u64>,
    /// Bytes all attachments of one record may hold together (default
    /// 128 MiB).
    pub record_max_bytes: Option<u64>,
    /// Media types accepted; `type/*` accepts a family (default JPEG,
    /// PNG, WebP, any audio, PDF).
    pub mime_allowed: Option<Vec<String>>,
    /// Bytes one uploaded chunk may hold (default 1 MiB).
    pub chunk_max_bytes: Option<usize>,
    /// How long bytes no record refers to any more are kept before they
    /// are removed, in seconds (default 7 days).
    pub garbage_grace_secs: Option<u64>,
    /// How often the server looks for such bytes, in seconds (default
    /// an hour).
    pub garbage_every_secs: Option<u64>,
}

impl AttachmentsConfig {
    /// The limits, defaults filled in.
    pub fn limits(&self) -> crate::engine::attachments::AttachmentLimits {
        let default = crate::engine::attachments::AttachmentLimits::default();
        crate::engine::attachments::AttachmentLimits {
            size_max_bytes: self.size_max_bytes.unwrap_or(default.size_max_bytes),
            record_max_bytes: self.record_max_bytes.unwrap_or(default.record_max_bytes),
            mime_allowed: self.mime_allowed.clone().unwrap_or(default.mime_allowed),
            chunk_max_bytes: self.chunk_max_bytes.unwrap_or(default.chunk_max_bytes),
        }
    }

    /// How long unreferenced bytes are kept.
    pub fn garbage_grace(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.garbage_grace_secs.unwrap_or(7 * 24 * 3600))
    }

    /// How often garbage is looked for.
    pub fn garbage_every(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.garbage_every_secs.unwrap_or(3600))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("garbage_every_secs", self.garbage_every_secs),
            ("size_max_bytes", self.size_max_bytes),
            ("record_max_bytes", self.record_max_bytes),
            ("chunk_max_bytes", self.chunk_max_bytes.map(|v| v as u64)),
        ] {
            if value == Some(0) {
                return Err(ConfigError::ZeroAttachmentsSetting { name });
            }
        }
        Ok(())
    }
}

/// The `[records]` table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordsConfig {
    /// How far ahead of the server's clock, in ms, a time a tablet claims
    /// (a change's time, a record's `created_at`) may be before the record
    /// is flagged on the review desk and in exports (default one day).
    /// The merge ignores clocks either way.
    pub clock_ahead_max_ms: Option<u64>,
}

impl RecordsConfig {
    /// `clock_ahead_max_ms`, or the default.
    pub fn clock_ahead_max_ms_or_default(&self) -> u64 {
        self.clock_ahead_max_ms
            .unwrap_or(crate::engine::hub::CLOCK_AHEAD_MAX_MS_DEFAULT as u64)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.clock_ahead_max_ms == Some(0) {
            // Clocks that agree still differ by a little: zero would flag
            // nearly every record.
            return Err(ConfigError::ZeroRecordsSetting {
                name: "clock_ahead_max_ms",
            });
        }
        Ok(())
    }
}

/// The `[connections]` table; each key is also a flag and a `BARAZA_*`
/// variable, which win over it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsFileConfig {
    /// Open connections at most, sync sessions included.
    pub connections_max: Option<usize>,
    /// Open connections from one address, sync sessions not included.
    pub connections_per_address_max: Option<usize>,
    /// Accept to end of TLS handshake, in milliseconds.
    pub handshake_timeout_ms: Option<u64>,
    /// Handshake (or last response) to the next request's headers, in
    /// milliseconds.
    pub idle_timeout_ms: Option<u64>,
    /// Accept to the time a silent connection gives way when every slot is
    /// wanted, in milliseconds.
    pub first_request_grace_ms: Option<u64>,
    /// A sync session's silence before it is closed, in milliseconds.
    pub session_idle_ms: Option<u64>,
}

/// How many connections the listener keeps open and how long an idle one
/// may live, resolved. Without deadlines a client that connects and sends
/// nothing would hold a connection slot for ever, and enough of them would
/// starve every tablet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections at most: TLS handshakes, HTTP connections and sync
    /// sessions together.
    pub connections_max: usize,
    /// Open connections from one client address (IPv4 address or IPv6
    /// /64) that have not become sync sessions; connections over it are
    /// closed as soon as they are accepted.
    pub connections_per_address_max: usize,
    /// From accepting a connection to the end of its TLS handshake.
    pub handshake_timeout: std::time::Duration,
    /// From the end of the handshake to the complete headers of the first
    /// request, and from each response to the next request's headers.
    pub idle_timeout: std::time::Duration,
    /// From accepting a connection to the time when, if it has sent no
    /// complete request yet and every slot is wanted, it is closed for a
    /// waiting client (before that it is held to its deadlines only).
    pub first_request_grace: std::time::Duration,
    /// A sync session with no frame and no ping from its device for this
    /// long is closed.
    pub session_idle: std::time::Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            connections_per_address_max: CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            handshake_timeout: std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS_DEFAULT),
            idle_timeout: std::time::Duration::from_millis(IDLE_TIMEOUT_MS_DEFAULT),
            first_request_grace: std::time::Duration::from_millis(FIRST_REQUEST_GRACE_MS_DEFAULT),
            session_idle: std::time::Duration::from_millis(SESSION_IDLE_MS_DEFAULT),
        }
    }
}

impl ConnectionLimits {
    /// Flags (and environment) over the file over the defaults; zero is
    /// refused for every setting.
    fn merge(
        args: &ConnectionsArgs,
        file: &ConnectionsFileConfig,
    ) -> Result<ConnectionLimits, ConfigError> {
        fn pick<T: Copy + PartialEq + From<u8>>(
            name: &'static str,
            flag: Option<T>,
            file: Option<T>,
            default: T,
        ) -> Result<T, ConfigError> {
            let value = flag.or(file).unwrap_or(default);
            if value == T::from(0) {
                return Err(ConfigError::ZeroConnectionSetting { name });
            }
            Ok(value)
        }
        Ok(ConnectionLimits {
            connections_max: pick(
                "connections_max",
                args.connections_max,
                file.connections_max,
                CONNECTIONS_MAX_DEFAULT,
            )?,
            connections_per_address_max: pick(
                "connections_per_address_max",
                args.connections_per_address_max,
                file.connections_per_address_max,
                CONNECTIONS_PER_ADDRESS_MAX_DEFAULT,
            )?,
            handshake_timeout: std::time::Duration::from_millis(pick(
                "handshake_timeout_ms",
                args.handshake_timeout_ms,
                file.handshake_timeout_ms,
                HANDSHAKE_TIMEOUT_MS_DEFAULT,
            )?),
            idle_timeout: std::time::Duration::from_millis(pick(
                "idle_timeout_ms",
                args.idle_timeout_ms,
                file.idle_timeout_ms,
                IDLE_TIMEOUT_MS_DEFAULT,
            )?),
            first_request_grace: std::time::Duration::from_millis(pick(
                "first_request_grace_ms",
                args.first_request_grace_ms,
                file.first_request_grace_ms,
                FIRST_REQUEST_GRACE_MS_DEFAULT,
            )?),
            session_idle: std::time::Duration::from_millis(pick(
                "session_idle_ms",
                args.session_idle_ms,
                file.session_idle_ms,
                SESSION_IDLE_MS_DEFAULT,
            )?),
        })
    }
}

/// The `[access]` table.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// How long a device token lives, in seconds (default 90 days). A
    /// tablet rotates its token once half of that has passed; one that
    /// does not sync for a whole lifetime must be enrolled again.
    pub token_lifetime_secs: Option<u64>,
    /// Turns the write-rule inspection off. For measuring its cost only:
    /// without it any device may change any field of what it may write.
    #[serde(default)]
    pub skip_write_rules_for_benchmarks: bool,
}

/// The `[limits]` table. `None` means "use the sync layer's default".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest sync frame (one protocol message), in bytes.
    pub frame_bytes_max: Option<usize>,
    /// Largest document, in bytes.
    pub doc_bytes_max: Option<usize>,
    /// Most changes carried by one message.
    pub changes_per_message_max: Option<usize>,
    /// Most operations the changes of one message decode to.
    pub ops_per_message_max: Option<usize>,
    /// Most operations one document may hold.
    pub doc_ops_max: Option<usize>,
}

impl LimitsConfig {
    /// The protocol limits these settings give, defaults filled in.
    pub fn protocol_limits(&self) -> baraza_protocol::Limits {
        let d = baraza_protocol::Limits::DEFAULT;
        baraza_protocol::Limits {
            frame_bytes_max: self.frame_bytes_max_or_default(),
            doc_bytes_max: self.doc_bytes_max.unwrap_or(d.doc_bytes_max),
            changes_per_message_max: self
                .changes_per_message_max
                .unwrap_or(d.changes_per_message_max),
            ops_per_message_max: self.ops_per_message_max.unwrap_or(d.ops_per_message_max),
            doc_ops_max: self.doc_ops_max.unwrap_or(d.doc_ops_max),
            pushes_in_flight_max: d.pushes_in_flight_max,
        }
    }

    /// `frame_bytes_max`, or [`FRAME_BYTES_MAX_DEFAULT`] when unset.
    pub fn frame_bytes_max_or_default(&self) -> usize {
        self.frame_bytes_max.unwrap_or(FRAME_BYTES_MAX_DEFAULT)
    }

    /// Largest WebSocket message and frame accepted. Four times the protocol
    /// frame so that the sync layer, not the WebSocket codec, is what refuses
    /// an oversized frame and can say why.
    pub fn ws_message_bytes_max(&self) -> usize {
        self.frame_bytes_max_or_default().saturating_mul(4)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            ("frame_bytes_max", self.frame_bytes_max),
            ("doc_bytes_max", self.doc_bytes_max),
            ("changes_per_message_max", self.changes_per_message_max),
            ("ops_per_message_max", self.ops_per_message_max),
            ("doc_ops_max", self.doc_ops_max),
        ];
        for (name, value) in limits {
            if value == Some(0) {
                return Err(ConfigError::ZeroLimit { name });
            }
        }
        Ok(())
    }
}

/// TLS certificate and key files given by the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Everything `serve` needs, after merging flags, environment, file and
/// defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeConfig {
    /// Data directory.
    pub data: PathBuf,
    /// The backend.
    pub store: StoreChoice,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Operator-provided certificate, or `None` for the generated
    /// development certificate under `DATA/tls/`.
    pub tls: Option<TlsFiles>,
    /// Protocol limits from the config file's `[limits]` table.
    pub limits: LimitsConfig,
    /// Token lifetime and access checks from the `[access]` table.
    pub access: AccessConfig,
    /// Connection limits and deadlines.
    pub connections: ConnectionLimits,
    /// How records are judged on arrival, from the `[records]` table.
    pub records: RecordsConfig,
    /// Attachments' limits, from the `[attachments]` table.
    pub attachments: AttachmentsConfig,
}

impl ServeConfig {
    /// Reads the config file named by `args` (if any) and merges.
    pub fn resolve(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = load_file(args.common.config.as_deref())?;
        ServeConfig::merge(args, file)
    }

    /// Merges already-parsed flags/environment (`args`) over the config
    /// file. `file` carries the file's directory, against which relative
    /// paths written in the file are resolved, so a config file means the
    /// same thing whatever directory the server is started from.
    pub fn merge(
        args: &ServeArgs,
        file: Option<(FileConfig, PathBuf)>,
    ) -> Result<ServeConfig, ConfigError> {
        let (file, base) = match file {
            Some((file, base)) => (file, base),
            None => (FileConfig::default(), PathBuf::new()),
        };
        let from_file = |path: &Option<PathBuf>| path.as_ref().map(|p| base.join(p));

        let data = args
            .common
            .data
            .clone()
            .or_else(|| from_file(&file.data))
            .unwrap_or_else(|| PathBuf::from(DATA_DEFAULT));

        let store = store_choice(args.common.store.as_deref(), file.store.as_deref())?;

        let listen = match (args.listen, &file.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|_| ConfigError::Listen {
                value: text.clone(),
            })?,
            (None, None) => default_listen(),
        };

        // Cert and key are taken as a pair from one source so a flag for one
        // and a file entry for the other cannot combine into a mismatch.
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => match (from_file(&file.tls_cert), from_file(&file.tls_key)) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(ConfigError::TlsHalf),
            },
            _ => return Err(ConfigError::TlsHalf),
        }
        .map(|(cert, key)| TlsFiles { cert, key });

        file.limits.validate()?;
        file.records.validate()?;
        file.attachments.validate()?;
        let connections = ConnectionLimits::merge(&args.connections, &file.connections)?;
        Ok(ServeConfig {
            data,
            store,
            listen,
            tls,
            limits: file.limits,
            access: file.access,
            connections,
            records: file.records,
            attachments: file.attachments,
        })
    }
}

/// The data directory for the `device` commands, with the same precedence
/// as `serve`.
pub fn resolve_data_dir(common: &CommonArgs) -> Result<PathBuf, ConfigError> {
    let file = load_file(common.config.as_deref())?;
    let from_file = file.and_then(|(file, base)| file.data.map(|d| base.join(d)));
    Ok(common
        .data
        .clone()
        .or(from_file)
        .unwrap_or_else(|| PathBuf::from(DATA_DEFAULT)))
}

/// The backend for the admin commands, with the same precedence as
/// `serve`.
pub fn resolve_store(common: &CommonArgs) -> Result<StoreChoice, ConfigError> {
    let file = load_file(common.config.as_deref())?;
    store_choice(
        common.store.as_deref(),
        file.as_ref().and_then(|(f, _)| f.store.as_deref()),
    )
}

/// The flag (or environment) over the file's `store`, over sled.
fn store_choice(flag: Option<&str>, file: Option<&str>) -> Result<StoreChoice, ConfigError> {
    match flag.or(file) {
        None => Ok(StoreChoice::Sled),
        Some(text) => StoreChoice::parse(text).ok_or(ConfigError::Store),
    }
}

/// Reads and parses a config file, returning it with its directory.
pub fn load_file(path: Option<&Path>) -> Result<Option<(FileConfig, PathBuf)>, ConfigError> {
    let Some(path) = path else {
        return Ok(None);
    };
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_error)?.len();
    if len > CONFIG_FILE_BYTES_MAX {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    let file = parse_file(&text).map_err(|source| ConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(source),
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(Some((file, base)))
}

/// Parses the text of a config file.
pub fn parse_file(text: &str) -> Result<FileConfig, toml::de::Error> {
    toml::from_str(text)
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(text: &str) -> Option<(FileConfig, PathBuf)> {
        Some((parse_file(text).unwrap(), PathBuf::from("/etc/baraza")))
    }

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn with_nothing_given_the_defaults_apply() {
        let config = ServeConfig::merge(&args(), None).unwrap();
        assert_eq!(config.data, PathBuf::from(DATA_DEFAULT));
        assert_eq!(config.listen, LISTEN_DEFAULT.parse().unwrap());
        assert_eq!(config.tls, None);
        assert_eq!(config.limits, LimitsConfig::default());
        assert_eq!(
            config.limits.ws_message_bytes_max(),
            4 * FRAME_BYTES_MAX_DEFAULT
        );
        assert_eq!(config.connections, ConnectionLimits::default());
        assert_eq!(config.connections.connections_max, 4096);
        assert_eq!(
            config.connections.handshake_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.connections.idle_timeout, Duration::from_secs(30));
    }

    #[test]
    fn the_clock_tolerance_comes_from_records_and_zero_is_refused() {
        let config = ServeConfig::merge(&args(), None).unwrap();
        assert_eq!(config.records.clock_ahead_max_ms_or_default(), 86_400_000);
        let config =
            ServeConfig::merge(&args(), file("[records]\nclock_ahead_max_ms = 3600000\n")).unwrap();
        assert_eq!(config.records.clock_ahead_max_ms_or_default(), 3_600_000);
        assert!(matches!(
            ServeConfig::merge(&args(), file("[records]\nclock_ahead_max_ms = 0\n")),
            Err(ConfigError::ZeroRecordsSetting { .. })
        ));
        assert!(parse_file("[records]\nclock_ahead_max = 1\n").is_err());
    }

    #[test]
    fn connection_settings_come_from_the_file_and_zero_is_refused() {
        let config = ServeConfig::merge(
            &args(),
            file(
                r#"
                [connections]
                connections_max = 12
                connections_per_address_max = 4
                handshake_timeout_ms = 1500
                idle_timeout_ms = 2500
                first_request_grace_ms = 700
                session_idle_ms = 9000
                "#,
            ),
        )
        .unwrap();
        assert_eq!(
            config.connections,
            ConnectionLimits {
                connections_max: 12,
                connections_per_address_max: 4,
                handshake_timeout: Duration::from_millis(1500),
                idle_timeout: Duration::from_millis(2500),
                first_request_grace: Duration::from_millis(700),
                session_idle: Duration::from_millis(9000),
            }
        );
        for key in [
            "connections_max",
            "connections_per_address_max",
            "handshake_timeout_ms",
            "idle_timeout_ms",
            "first_request_grace_ms",
            "session_idle_ms",
        ] {
            let text = format!("[connections]\n{key} = 0");
            assert!(
                matches!(
                    ServeConfig::merge(&args(), file(&text)),
                    Err(ConfigError::ZeroConnectionSetting { name }) if name == key
                ),
                "{key}"
            );
        }
        let zero_flag = ServeArgs {
            connections: ConnectionsArgs {
                handshake_timeout_ms: Some(0),
                ..ConnectionsArgs::default()
            },
            ..args()
        };
        assert!(ServeConfig::merge(&zero_flag, None).is_err());
        assert!(parse_file("[connections]\nidle_timeout = 5").is_err());
    }

    #[test]
    fn the_file_overrides_the_defaults_and_its_relative_paths_are_its_own() {
        let config = ServeConfig::merge(
            &args(),
            file(
                r#"
                data = "data"
                listen = "0.0.0.0:9443"
                tls_cert = "/certs/cert.pem"
                tls_key = "key.pem"
                [limits]
                frame_bytes_max = 1024
                doc_bytes_max = 4096
                changes_per_message_max = 10
                "#,
            ),
        )
        .unwrap();
        assert_eq!(config.data, PathBuf::from("/etc/baraza/data"));
        assert_eq!(config.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: PathBuf::from("/certs/cert.pem"),
                key: PathBuf::from("/etc/baraza/key.pem"),
            })
        );
        assert_eq!(
            config.limits,
            LimitsConfig {
                frame_bytes_max: Some(1024),
                doc_bytes_max: Some(4096),
                changes_per_message_max: Some(10),
                ..LimitsConfig::default()
            }
        );
        assert_eq!(config.limits.ws_message_bytes_max(), 4096);
    }

    #[test]
    fn flags_and_environment_override_the_file() {
        let given = ServeArgs {
            common: CommonArgs {
                data: Some(PathBuf::from("flag-data")),
                store: None,
                config: None,
            },
            listen: Some("127.0.0.1:0".parse().unwrap()),
            tls_cert: Some(PathBuf::from("flag-cert.pem")),
            tls_key: Some(PathBuf::from("flag-key.pem")),
            connections: ConnectionsArgs {
                connections_max: Some(7),
                idle_timeout_ms: Some(250),
                ..ConnectionsArgs::default()
            },
        };
        let config = ServeConfig::merge(
            &given,
            file(
                r#"
                data = "file-data"
                listen = "0.0.0.0:9443"
                tls_cert = "file-cert.pem"
                tls_key = "file-key.pem"
                [limits]
                frame_bytes_max = 1024
                [connections]
                connections_max = 100
                connections_per_address_max = 3
                idle_timeout_ms = 9000
                "#,
            ),
        )
        .unwrap();
        // Setting by setting: a flag wins where given, the file elsewhere.
        assert_eq!(
            config.connections,
            ConnectionLimits {
                connections_max: 7,
                connections_per_address_max: 3,
                handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS_DEFAULT),
                idle_timeout: Duration::from_millis(250),
                first_request_grace: Duration::from_millis(FIRST_REQUEST_GRACE_MS_DEFAULT),
                session_idle: Duration::from_millis(SESSION_IDLE_MS_DEFAULT),
            }
        );
        assert_eq!(config.data, PathBuf::from("flag-data"));
        assert_eq!(config.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: PathBuf::from("flag-cert.pem"),
                key: PathBuf::from("flag-key.pem"),
            })
        );
        // Limits exist only in the file, so they survive any flags.
        assert_eq!(config.limits.frame_bytes_max, Some(1024));
    }

    #[test]
    fn a_flag_beats_its_environment_variable() {
        // Flags are given for every setting, so whatever BARAZA_* variables
        // the developer's shell has set cannot change the outcome.
        let cli = Cli::try_parse_from([
            "baraza-server",
            "serve",
            "--data",
            "d",
            "--listen",
            "127.0.0.1:1",
            "--tls-cert",
            "c",
            "--tls-key",
            "k",
            "--config",
            "f.toml",
            "--connections-max",
            "9",
            "--connections-per-address-max",
            "2",
            "--handshake-timeout-ms",
            "300",
            "--idle-timeout-ms",
            "400",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("parsed {:?}", cli.command);
        };
        assert_eq!(args.common.data, Some(PathBuf::from("d")));
        assert_eq!(args.common.config, Some(PathBuf::from("f.toml")));
        assert_eq!(args.listen, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(args.tls_cert, Some(PathBuf::from("c")));
        assert_eq!(args.tls_key, Some(PathBuf::from("k")));
        assert_eq!(args.connections.connections_max, Some(9));
        assert_eq!(args.connections.connections_per_address_max, Some(2));
        assert_eq!(args.connections.handshake_timeout_ms, Some(300));
        assert_eq!(args.connections.idle_timeout_ms, Some(400));
    }

    #[test]
    fn a_certificate_without_its_key_is_refused_from_any_source() {
        let half = ServeArgs {
            tls_cert: Some(PathBuf::from("c")),
            ..args()
        };
        assert!(matches!(
            ServeConfig::merge(&half, None),
            Err(ConfigError::TlsHalf)
        ));
        assert!(matches!(
            ServeConfig::merge(&args(), file("tls_key = \"k\"")),
            Err(ConfigError::TlsHalf)
        ));
        // A flag pair is not completed by the file and vice versa.
        assert!(matches!(
            ServeConfig::merge(&half, file("tls_key = \"k\"")),
            Err(ConfigError::TlsHalf)
        ));
    }

    #[test]
    fn mistakes_in_the_file_are_reported_not_ignored() {
        assert!(parse_file("listen_addr = \"127.0.0.1:1\"").is_err());
        assert!(parse_file("[limits]\nframe_byte_max = 3").is_err());
        assert!(parse_file("[limits]\nframe_bytes_max = -3").is_err());
        assert!(matches!(
            ServeConfig::merge(&args(), file("listen = \"localhost\"")),
            Err(ConfigError::Listen { .. })
        ));
        assert!(matches!(
            ServeConfig::merge(&args(), file("[limits]\ndoc_bytes_max = 0")),
            Err(ConfigError::ZeroLimit {
                name: "doc_bytes_max"
            })
        ));
    }

    #[test]
    fn device_commands_find_the_data_directory_the_same_way() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("baraza.toml");
        std::fs::write(&path, "data = \"from-file\"").unwrap();
        let from_file = CommonArgs {
            data: None,
            store: None,
            config: Some(path.clone()),
        };
        assert_eq!(
            resolve_data_dir(&from_file).unwrap(),
            tmp.path().join("from-file")
        );
        let from_flag = CommonArgs {
            data: Some(PathBuf::from("flag")),
            store: None,
            config: Some(path),
        };
        assert_eq!(resolve_data_dir(&from_flag).unwrap(), PathBuf::from("flag"));
        assert_eq!(
            resolve_data_dir(&CommonArgs::default()).unwrap(),
            PathBuf::from(DATA_DEFAULT)
        );
    }

    #[test]
    fn the_store_is_sled_unless_a_postgres_url_is_given_and_its_password_is_never_shown() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("baraza.toml");
        std::fs::write(
            &path,
            "store = \"postgres://baraza:s3cret@db.local/baraza\"",
        )
        .unwrap();
        let from_file = CommonArgs {
            config: Some(path.clone()),
            ..CommonArgs::default()
        };
        let chosen = resolve_store(&from_file).unwrap();
        assert_eq!(
            chosen,
            StoreChoice::Postgres("postgres://baraza:s3cret@db.local/baraza".into())
        );
        assert_eq!(chosen.redacted(), "postgres://baraza:***@db.local/baraza");
        assert!(!format!("{chosen:?}").contains("s3cret"));
        let flag = CommonArgs {
            store: Some("sled".into()),
            config: Some(path),
            ..CommonArgs::default()
        };
        assert_eq!(resolve_store(&flag).unwrap(), StoreChoice::Sled);
        assert_eq!(
            resolve_store(&CommonArgs::default()).unwrap(),
            StoreChoice::Sled
        );
        let typo = CommonArgs {
            store: Some("postgress://baraza:s3cret@db".into()),
            ..CommonArgs::default()
        };
        let refused = resolve_store(&typo).unwrap_err().to_string();
        assert!(refused.contains("--store must be"), "{refused}");
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}
