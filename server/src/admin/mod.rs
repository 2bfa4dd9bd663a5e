//! Administration commands (`device add|list|revoke`) and the admin socket
//! that lets them reach a running server.
//!
//! The embedded database lets one process open a data directory, so while
//! a server runs the commands cannot open it themselves. The server therefore
//! listens on `DATA/admin.sock` (mode 0600, inside a 0700 data directory:
//! filesystem permissions are the authentication) for one-line JSON
//! requests such as `{"cmd":"device_add","name":"tablet 3"}`, each answered
//! by one JSON line. A command first tries the socket and, if no server
//! answers, opens the database directly.
//!
//! Unix only, like the rest of the server.

use std::future::Future;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::identity::devices::{DeviceError, DeviceRecord, DeviceRegistry};
use crate::identity::users::{Role, User, UserError, UserRegistry};
use crate::storage::audit::{AuditLog, Verdict};
use crate::storage::data_dir::{DataDir, DataDirError};
use crate::storage::StoreChoice;

/// Longest request or reply line. A reply listing thousands of devices fits
/// comfortably; a request is a few dozen bytes.
const LINE_BYTES_MAX: u64 = 16 * 1024 * 1024;
/// Longest a request may take end to end, so a stuck client cannot hold a
/// slot forever.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin clients served at once; anything more waits.
const CLIENTS_MAX: usize = 8;
/// How long a command keeps retrying the socket when the database is locked,
/// which happens when it runs while a server is still starting up.
const BUSY_RETRY: Duration = Duration::from_secs(3);

/// Failures of admin commands and of the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The data directory or database could not be opened.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// A device operation failed (offline path).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The user registry failed.
    #[error(transparent)]
    Users(#[from] UserError),
    /// The admin socket could not be bound or prepared.
    #[error("cannot listen on admin socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// Talking to the running server over its socket failed.
    #[error("admin socket {path} failed")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: io::Error,
    },
    /// The running server sent something that is not a reply.
    #[error("unreadable reply from the server's admin socket")]
    BadReply(#[source] serde_json::Error),
    /// The audit log failed.
    #[error(transparent)]
    Audit(#[from] crate::storage::audit::AuditError),
    /// `user add` named a role that does not exist.
    #[error("unknown role {0:?}: officer, liaison, supervisor or admin")]
    UnknownRole(String),
    /// The server (or the offline path) refused the request.
    #[error("{0}")]
    Refused(String),
}

/// A request line on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Register a device.
    DeviceAdd {
        /// Its name.
        name: String,
        /// The user it acts for.
        user: String,
    },
    /// Retire a device handed back.
    DeviceRetire {
        /// Its id.
        id: String,
    },
    /// Erase a record of contact details, from the server and devices.
    RecordErase {
        /// The record id.
        id: String,
    },
    /// Quarantine a record (with a reason), or lift it (without).
    RecordQuarantine {
        /// The record id.
        id: String,
        /// Why; None lifts the quarantine.
        reason: Option<String>,
    },
    /// List devices.
    DeviceList,
    /// Revoke a device.
    DeviceRevoke {
        /// Its id.
        id: String,
    },
    /// Add a user. The password crosses only the admin socket (mode 0600)
    /// and is never logged.
    UserAdd {
        /// Login name.
        name: String,
        /// officer, liaison, supervisor or admin.
        role: String,
        /// Areas the user works in.
        areas: Vec<String>,
        /// The initial password.
        password: String,
    },
    /// List users (never their password hashes).
    UserList,
    /// Disable or re-enable a user.
    UserDisable {
        /// Login name.
        name: String,
        /// True to disable, false to enable.
        disabled: bool,
    },
    /// Replace a user's areas.
    UserAreas {
        /// Login name.
        name: String,
        /// The new areas.
        areas: Vec<String>,
    },
    /// Release an account locked after failed logins.
    UserRelease {
        /// Login name.
        name: String,
    },
    /// Check the audit log's hash chain.
    AuditVerify,
    /// Every audit entry.
    AuditExport,
}

impl AdminRequest {
    /// The command's wire name, safe to log.
    pub fn name(&self) -> &'static str {
        match self {
            AdminRequest::DeviceAdd { .. } => "device_add",
            AdminRequest::DeviceList => "device_list",
            AdminRequest::DeviceRevoke { .. } => "device_revoke",
            AdminRequest::DeviceRetire { .. } => "device_retire",
            AdminRequest::RecordErase { .. } => "record_erase",
            AdminRequest::RecordQuarantine { .. } => "record_quarantine",
            AdminRequest::UserAdd { .. } => "user_add",
            AdminRequest::UserList => "user_list",
            AdminRequest::UserDisable { .. } => "user_disable",
            AdminRequest::UserAreas { .. } => "user_areas",
            AdminRequest::UserRelease { .. } => "user_release",
            AdminRequest::AuditVerify => "audit_verify",
            AdminRequest::AuditExport => "audit_export",
        }
    }
}

/// One user as the admin commands show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    /// Login name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// Areas.
    pub areas: Vec<String>,
    /// Disabled?
    pub disabled: bool,
    /// Locked after failed logins?
    pub locked: bool,
}

impl From<User> for UserSummary {
    fn from(u: User) -> Self {
        UserSummary {
            name: u.name,
            role: u.role,
            areas: u.areas,
            disabled: u.disabled,
            locked: u.locked,
        }
    }
}

/// The registries the admin commands act on.
#[derive(Clone)]
pub struct Registries {
    /// Devices and their tokens.
    pub devices: DeviceRegistry,
    /// Users, roles, areas, passwords.
    pub users: UserRegistry,
    /// The audit log.
    pub audit: AuditLog,
    /// The records, for erasure.
    pub records: Records,
}

/// How admin commands reach the records.
#[derive(Clone)]
pub enum Records {
    /// Through the running server's hub.
    Live(std::sync::Arc<crate::engine::hub::SyncHub>),
    /// No server runs: a hub is opened over the storage for the one
    /// command, then closed cleanly (so tablets are not told to re-offer
    /// everything).
    Offline(crate::storage::Storage),
}

impl Records {
    /// Runs `f` on the live hub, or on one opened for it and closed cleanly.
    fn with_hub<T>(
        &self,
        f: impl FnOnce(&crate::engine::hub::SyncHub) -> Result<T, crate::engine::docs::DocsError>,
    ) -> Result<T, crate::engine::docs::DocsError> {
        match self {
            Records::Live(hub) => f(hub),
            Records::Offline(storage) => {
                let hub = crate::engine::hub::SyncHub::open(storage)
                    .map_err(|e| crate::engine::docs::DocsError::Commit(e.to_string()))?;
                let out = f(&hub);
                hub.flush()
                    .map_err(|e| crate::engine::docs::DocsError::Commit(e.to_string()))?;
                out
            }
        }
    }

    fn erase(&self, id: baraza_protocol::DocId) -> Result<(), crate::engine::hub::EraseError> {
        match self {
            Records::Live(hub) => hub.erase_record(id, "admin"),
            Records::Offline(storage) => {
                let hub = crate::engine::hub::SyncHub::open(storage).map_err(|e| {
                    crate::engine::hub::EraseError::Docs(crate::engine::docs::DocsError::Commit(
                        e.to_string(),
                    ))
                })?;
                let erased = hub.erase_record(id, "admin");
                hub.flush().map_err(|e| {
                    crate::engine::hub::EraseError::Docs(crate::engine::docs::DocsError::Commit(
                        e.to_string(),
                    ))
                })?;
                erased
            }
        }
    }
}

impl Registries {
    /// The registries over `storage`, with no server running.
    pub fn open(storage: &crate::storage::Storage) -> Registries {
        Registries {
            devices: DeviceRegistry::new(storage.devices.clone()),
            users: UserRegistry::new(storage.users.clone(), storage.throttles.clone()),
            audit: AuditLog::new(storage.audit.clone()),
            records: Records::Offline(storage.clone()),
        }
    }
}

/// A reply line on the admin socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum AdminReply {
    /// The device was registered; `token` is shown nowhere else.
    DeviceAdded {
        /// Device id.
        id: String,
        /// Device name as stored.
        name: String,
        /// Bearer token.
        token: String,
    },
    /// All devices.
    Devices {
        /// The records (token hashes, never tokens).
        devices: Vec<DeviceRecord>,
    },
    /// The record was erased.
    RecordErased {
        /// Record id.
        id: String,
    },
    /// The record was quarantined, or its quarantine lifted.
    RecordQuarantined {
        /// Record id.
        id: String,
        /// True if the quarantine was lifted.
        lifted: bool,
    },
    /// The device will retire at its next connection.
    DeviceRetiring {
        /// Device id.
        id: String,
    },
    /// The device was revoked.
    DeviceRevoked {
        /// Its id.
        id: String,
    },
    /// A user after the change.
    User {
        /// The user.
        user: UserSummary,
    },
    /// All users.
    Users {
        /// The users.
        users: Vec<UserSummary>,
    },
    /// The audit log's state.
    AuditVerdict {
        /// True if every entry and the chain are intact.
        intact: bool,
        /// Entries checked (intact) or where it breaks.
        at: u64,
        /// What is wrong, if anything.
        reason: String,
    },
    /// The audit log.
    AuditEntries {
        /// Every entry, in order.
        entries: Vec<crate::storage::audit::Entry>,
    },
    /// The request failed.
    Error {
        /// Why, for the operator.
        message: String,
    },
}

/// Who asked for an administrative change through the admin HTTP API.
/// Named in the change's audit entry; changes made at the server itself
/// (command line, admin socket) have no requester.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The administrator's user name.
    pub user: String,
    /// The device they used.
    pub device: String,
}

/// Carries out one request against a registry. Blocking: `add` and `revoke`
/// wait for the disk.
pub fn execute(registries: &Registries, request: AdminRequest) -> AdminReply {
    execute_for(registries, request, None).unwrap_or_else(|error| AdminReply::Error {
        message: error_chain(&error),
    })
}

/// Carries out one request on behalf of `by` (or the operator), keeping
/// failures typed so the admin HTTP API can answer them with a fitting
/// status. Every change that is made is audited (never passwords), once it
/// is made: a refused request changed nothing.
pub fn execute_for(
    registries: &Registries,
    request: AdminRequest,
    by: Option<&Requester>,
) -> Result<AdminReply, AdminError> {
    let devices = &registries.devices;
    let users = &registries.users;
    let audit = |event: &str, mut details: serde_json::Value| {
        if let (Some(by), Some(map)) = (by, details.as_object_mut()) {
            map.insert(
                "by".into(),
                serde_json::json!({ "user": by.user, "device": by.device }),
            );
        }
        registries.audit.record(event, details);
    };
    let reply = match request {
        AdminRequest::AuditVerify => match registries.audit.verify()? {
            Verdict::Intact { entries } => AdminReply::AuditVerdict {
                intact: true,
                at: entries,
                reason: String::new(),
            },
            Verdict::Broken { at, reason } => AdminReply::AuditVerdict {
                intact: false,
                at,
                reason,
            },
        },
        AdminRequest::AuditExport => AdminReply::AuditEntries {
            entries: registries.audit.entries().collect::<Result<Vec<_>, _>>()?,
        },
        AdminRequest::UserAdd {
            name,
            role,
            areas,
            password,
        } => {
            let parsed = Role::parse(&role).ok_or_else(|| AdminError::UnknownRole(role.clone()))?;
            let user = users.add(&name, parsed, &areas, &password)?;
            audit(
                "user_added",
                serde_json::json!({ "user": name, "role": role, "areas": areas }),
            );
            AdminReply::User { user: user.into() }
        }
        AdminRequest::UserList => AdminReply::Users {
            users: users.list()?.into_iter().map(UserSummary::from).collect(),
        },
        AdminRequest::UserDisable { name, disabled } => {
            let user = users.set_disabled(&name, disabled)?;
            // Live sessions of the user's devices read it again.
            registries.devices.wake();
            audit(
                "user_disabled",
                serde_json::json!({ "user": name, "disabled": disabled }),
            );
            AdminReply::User { user: user.into() }
        }
        AdminRequest::UserAreas { name, areas } => {
            let user = users.set_areas(&name, &areas)?;
            registries.devices.wake();
            audit(
                "user_areas",
                serde_json::json!({ "user": name, "areas": areas }),
            );
            AdminReply::User { user: user.into() }
        }
        AdminRequest::UserRelease { name } => {
            let user = users.release(&name)?;
            audit("user_released", serde_json::json!({ "user": name }));
            AdminReply::User { user: user.into() }
        }
        AdminRequest::DeviceAdd { name, user } => {
            if users.get(&user)?.is_none() {
                return Err(AdminError::Refused(format!(
                    "no user named {user}; add the user first"
                )));
            }
            let new = devices.add_for_user(&name, Some(&user))?;
            audit(
                "device_added",
                serde_json::json!({ "name": new.identity.name, "device": new.identity.id.to_hex(), "user": user }),
            );
            AdminReply::DeviceAdded {
                id: new.identity.id.to_hex(),
                name: new.identity.name,
                token: new.token,
            }
        }
        AdminRequest::DeviceList => AdminReply::Devices {
            devices: devices.list()?,
        },
        AdminRequest::DeviceRevoke { id } => {
            devices.revoke(&id)?;
            // What the device may hold that the server never received lies
            // beyond these heads: the record for an investigation.
            let acknowledged: Vec<serde_json::Value> = devices
                .acknowledged(&id)?
                .into_iter()
                .map(|(record, heads)| serde_json::json!({ "record": record, "heads": heads }))
                .collect();
            audit(
                "device_revoked",
                serde_json::json!({ "device": id, "last_acknowledged": acknowledged }),
            );
            AdminReply::DeviceRevoked { id }
        }
        AdminRequest::DeviceRetire { id } => {
            devices.retire(&id)?;
            audit("device_retiring", serde_json::json!({ "device": id }));
            AdminReply::DeviceRetiring { id }
        }
        AdminRequest::RecordErase { id } => {
            // Audited by the hub once the erasure is durable.
            let doc = id
                .parse::<baraza_protocol::DocId>()
                .map_err(|_| AdminError::Refused(format!("{id:?} is not a record id")))?;
            registries
                .records
                .erase(doc)
                .map_err(|e| AdminError::Refused(error_chain(&e)))?;
            AdminReply::RecordErased { id }
        }
        AdminRequest::RecordQuarantine { id, reason } => {
            let doc = id
                .parse::<baraza_protocol::DocId>()
                .map_err(|_| AdminError::Refused(format!("{id:?} is not a record id")))?;
            let lifting = reason.is_none();
            let changed = registries
                .records
                .with_hub(|hub| hub.set_quarantine(doc, reason.as_deref(), "admin"))
                .map_err(|e| AdminError::Refused(error_chain(&e)))?;
            if !changed {
                return Err(AdminError::Refused(if lifting {
                    format!("record {id} is not quarantined")
                } else {
                    format!("no record {id}")
                }));
            }
            AdminReply::RecordQuarantined {
                id,
                lifted: lifting,
            }
        }
    };
    Ok(reply)
}

/// Runs a device command against the data directory at `root`: through the
/// running server's admin socket if there is one, else on the database
/// directly. Creates the directory if it does not exist yet, so devices can
/// be registered before the first `serve`.
pub fn run_command(
    root: &Path,
    store: &StoreChoice,
    request: AdminRequest,
) -> Result<AdminReply, AdminError> {
    let data = DataDir::create(root)?;
    let deadline = std::time::Instant::now() + BUSY_RETRY;
    loop {
        if let Some(reply) = send_to_server(&data.admin_socket(), &request)? {
            return Ok(reply);
        }
        match crate::storage::open(store, &data) {
            Ok(storage) => {
                let reply = execute(&Registries::open(&storage), request);
                storage.close_unchanged().map_err(DataDirError::from)?;
                return Ok(reply);
            }
            // Locked but no socket yet: a server is starting. Give it a
            // moment to bind the socket before giving up.
            Err(DataDirError::Busy { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Sends one request to a running server. `Ok(None)` means no server is
/// listening (no socket file, or a stale one left by a crash).
pub fn send_to_server(
    socket: &Path,
    request: &AdminRequest,
) -> Result<Option<AdminReply>, AdminError> {
    let socket_error = |source| AdminError::Socket {
        path: socket.to_path_buf(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(socket_error(e)),
    };
    stream
        .set_read_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(socket_error)?;
    stream
        .set_write_timeout(Some(EXCHANGE_TIMEOUT))
        .map_err(socket_error)?;
    let mut line = serde_json::to_vec(request).map_err(AdminError::BadReply)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(socket_error)?;

    let mut reply = Vec::new();
    BufReader::new(stream)
        .take(LINE_BYTES_MAX)
        .read_until(b'\n', &mut reply)
        .map_err(socket_error)?;
    serde_json::from_slice(&reply)
        .map(Some)
        .map_err(AdminError::BadReply)
}

/// The running server's end of the admin socket. Dropping it removes the
/// socket file.
pub struct AdminServer {
    listener: tokio::net::UnixListener,
    path: PathBuf,
    registries: Registries,
}

impl AdminServer {
    /// Binds `DATA/admin.sock`, replacing a stale file from an earlier run.
    ///
    /// Call only while holding the data directory's database lock: that is
    /// what guarantees the file being replaced belongs to no live server.
    /// Must be called inside a Tokio runtime.
    pub fn bind(data: &DataDir, registries: Registries) -> Result<AdminServer, AdminError> {
        let path = data.admin_socket();
        let bind_error = |source| AdminError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(bind_error(e)),
            _ => {}
        }
        let listener = tokio::net::UnixListener::bind(&path).map_err(bind_error)?;
        // The directory is already private; this keeps the socket private
        // too if the directory was created by hand with looser permissions.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_error)?;
        Ok(AdminServer {
            listener,
            path,
            registries,
        })
    }

    /// Where the socket is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves requests until `shutdown` completes, then removes the socket.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(CLIENTS_MAX));
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "admin socket accept failed");
                        // Accept errors such as EMFILE persist for a while;
                        // pausing keeps this loop from spinning on them.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let permit = tokio::select! {
                _ = &mut shutdown => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let registries = self.registries.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(EXCHANGE_TIMEOUT, serve_client(stream, registries)).await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => tracing::debug!(%error, "admin client failed"),
                    Err(_) => tracing::debug!("admin client timed out"),
                }
            });
        }
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_file(&self.path) {
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(%error, path = %self.path.display(), "cannot remove admin socket");
            }
        }
    }
}

async fn serve_client(stream: tokio::net::UnixStream, registries: Registries) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    tokio::io::BufReader::new(read)
        .take(LINE_BYTES_MAX)
        .read_until(b'\n', &mut line)
        .await?;
    let reply = match serde_json::from_slice::<AdminRequest>(&line) {
        Ok(request) => {
            // Only the command's name: a user_add request carries a
            // password, and the reply to device_add carries a token.
            tracing::info!(cmd = request.name(), "admin request");
            tokio::task::spawn_blocking(move || execute(&registries, request))
                .await
                .unwrap_or_else(|error| AdminReply::Error {
                    message: format!("admin request failed: {error}"),
                })
        }
        Err(error) => AdminReply::Error {
            message: format!("bad request: {error}"),
        },
    };
    let mut out = serde_json::to_vec(&reply).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_have_the_documented_wire_form() {
        let request: AdminRequest =
            serde_json::from_str(r#"{"cmd":"device_add","name":"tablet 3","user":"ofc"}"#).unwrap();
        assert_eq!(
            request,
            AdminRequest::DeviceAdd {
                name: "tablet 3".into(),
                user: "ofc".into(),
            }
        );
        let list: AdminRequest = serde_json::from_str(r#"{"cmd":"device_list"}"#).unwrap();
        assert_eq!(list, AdminRequest::DeviceList);
        let reply = serde_json::to_string(&AdminReply::DeviceRevoked { id: "ab".into() }).unwrap();
        assert_eq!(reply, r#"{"reply":"device_revoked","id":"ab"}"#);
    }

    fn officer(root: &Path) {
        let reply = run_command(
            root,
            &StoreChoice::Sled,
            AdminRequest::UserAdd {
                name: "cpl.otieno".into(),
                role: "officer".into(),
                areas: vec!["kibera".into()],
                password: "mvua ya jioni 7".into(),
            },
        )
        .unwrap();
        assert!(matches!(reply, AdminReply::User { .. }), "{reply:?}");
    }

    #[test]
    fn changes_are_audited_once_made_with_who_asked() {
        let tmp = tempfile::tempdir().unwrap();
        let storage = crate::storage::sled::open_path(tmp.path()).unwrap();
        let registries = Registries::open(&storage);
        let add = |password: &str| AdminRequest::UserAdd {
            name: "njeri".into(),
            role: "officer".into(),
            areas: vec!["mathare".into()],
            password: password.into(),
        };
        let by = Requester {
            user: "amina".into(),
            device: "d1".into(),
        };
        assert!(matches!(
            execute_for(&registries, add("password123"), Some(&by)),
            Err(AdminError::Users(UserError::WeakPassword(_)))
        ));
        assert!(matches!(
            execute_for(
                &registries,
                AdminRequest::UserAdd {
                    name: "x".into(),
                    role: "chief".into(),
                    areas: vec![],
                    password: "radio check 1900".into(),
                },
                Some(&by)
            ),
            Err(AdminError::UnknownRole(_))
        ));
        assert_eq!(registries.audit.entries().count(), 0, "nothing was changed");

        execute_for(&registries, add("radio check 1900"), Some(&by)).unwrap();
        execute(
            &registries,
            AdminRequest::UserRelease {
                name: "njeri".into(),
            },
        );
        let entries: Vec<_> = registries.audit.entries().map(Result::unwrap).collect();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].event, "user_added");
        assert_eq!(entries[0].details["by"]["user"], "amina");
        assert_eq!(entries[0].details["by"]["device"], "d1");
        assert_eq!(entries[1].event, "user_released");
        assert!(entries[1].details.get("by").is_none());
        let text = serde_json::to_string(&entries).unwrap();
        assert!(!text.contains("radio check"));
    }

    #[test]
    fn without_a_server_commands_open_the_database_directly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let unknown_user = run_command(
            &root,
            &StoreChoice::Sled,
            AdminRequest::DeviceAdd {
                name: "tablet".into(),
                user: "nobody".into(),
            },
        )
        .unwrap();
        assert!(matches!(unknown_user, AdminReply::Error { .. }));
        officer(&root);
        let added = run_command(
            &root,
            &StoreChoice::Sled,
            AdminRequest::DeviceAdd {
                name: "tablet".into(),
                user: "cpl.otieno".into(),
            },
        )
        .unwrap();
        let AdminReply::DeviceAdded { id, .. } = added else {
            panic!("{added:?}");
        };
        let listed = run_command(&root, &StoreChoice::Sled, AdminRequest::DeviceList).unwrap();
        let AdminReply::Devices { devices } = listed else {
            panic!("{listed:?}");
        };
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].id, id);

        let refused = run_command(
            &root,
            &StoreChoice::Sled,
            AdminRequest::DeviceRevoke { id: "nope".into() },
        )
        .unwrap();
        assert!(matches!(refused, AdminReply::Error { .. }));
    }

    #[tokio::test]
    async fn with_a_server_commands_go_through_its_socket() {
        let tmp = tempfile::tempdir().unwrap();
        let data = DataDir::create(&tmp.path().join("data")).unwrap();
        let storage = crate::storage::sled::open(&data).unwrap();
        let registries = Registries::open(&storage);
        let devices = registries.devices.clone();
        // A stale socket file from a crashed run must not stop the bind.
        std::fs::write(data.admin_socket(), b"").unwrap();
        let server = AdminServer::bind(&data, registries).unwrap();
        let mode = std::fs::metadata(server.path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async move {
            let _ = stopped.await;
        }));

        let root = data.root().to_path_buf();
        let reply = tokio::task::spawn_blocking(move || {
            officer(&root);
            run_command(
                &root,
                &StoreChoice::Sled,
                AdminRequest::DeviceAdd {
                    name: "t".into(),
                    user: "cpl.otieno".into(),
                },
            )
        })
        .await
        .unwrap()
        .unwrap();
        let AdminReply::DeviceAdded { token, .. } = reply else {
            panic!("{reply:?}");
        };
        assert!(devices.authenticate(&token).unwrap().device().is_some());

        let socket = data.admin_socket();
        let garbage = tokio::task::spawn_blocking(move || {
            let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
            stream.write_all(b"{\"cmd\":\"drop_tables\"}\n").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).unwrap();
            reply
        })
        .await
        .unwrap();
        assert!(garbage.contains("\"reply\":\"error\""), "{garbage}");

        stop.send(()).unwrap();
        task.await.unwrap();
        assert!(!data.admin_socket().exists());
    }
}
