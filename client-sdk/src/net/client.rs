//! The networked [`Client`]: the [`BaseClient`] plus a server. Setting the
//! server up (`configure`, `enroll`) and syncing (`sync_once`,
//! `start_background`) are here; every offline operation is the base's.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use baraza_protocol::Limits;
use serde::Serialize;
use tokio::sync::watch;

use super::attachments::{self, UploadReport};
use super::sync::{self, Mode, SyncEvent, SyncListener, SyncReport};
use super::transport::{self, Endpoint};
use crate::base::BaseClient;
use crate::error::ClientError;

/// What enrolment gave this tablet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Enrolment {
    /// The device's own token (kept in the store, never shown again).
    #[serde(skip_serializing)]
    pub token: String,
    /// The device id.
    pub device_id: String,
    /// The user.
    pub user: String,
    /// Their role.
    pub role: String,
    /// Their areas.
    pub areas: Vec<String>,
    /// When the token expires (unix seconds); the SDK rotates it at half
    /// its life, whenever it syncs.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// True when the store's own device was enrolled again (its changes
    /// not yet synced stay deliverable), false for a new device.
    #[serde(default)]
    pub reenrolled: bool,
}

/// A background sync in progress; dropping it does not stop it, `stop` does.
pub struct BackgroundSync {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The attachment upload queue, beside the records' connection.
    uploads: tokio::task::JoinHandle<()>,
}

impl BackgroundSync {
    /// True once the loop has ended on its own (the server refused or
    /// wiped the device) or was stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops syncing and waits for the connection to close.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let _ = self.uploads.await;
    }
}

/// A tablet's records and its link to the server.
///
/// Every offline operation (edits, reads, `status`) is [`BaseClient`]'s,
/// reached through `Deref`, so an app holds one object for both layers.
#[derive(Clone)]
pub struct Client {
    base: BaseClient,
    limits: Limits,
    /// Chunk sizes learnt from the link, kept from one upload pass to the
    /// next.
    sizer: Arc<std::sync::Mutex<attachments::ChunkSizer>>,
}

impl Deref for Client {
    type Target = BaseClient;

    fn deref(&self) -> &BaseClient {
        &self.base
    }
}

impl From<BaseClient> for Client {
    fn from(base: BaseClient) -> Client {
        Client {
            base,
            limits: Limits::DEFAULT,
            sizer: Default::default(),
        }
    }
}

impl Client {
    /// Opens (or creates) the device's store in `data_dir`; see
    /// [`BaseClient::open`], which this is, ready to sync.
    pub fn open(data_dir: &Path, key: &[u8]) -> Result<Client, ClientError> {
        BaseClient::open(data_dir, key).map(Client::from)
    }

    /// [`open`](Self::open) with a deadline of its own; see
    /// [`BaseClient::open_within`].
    pub fn open_within(
        data_dir: &Path,
        key: &[u8],
        deadline: Duration,
    ) -> Result<Client, ClientError> {
        BaseClient::open_within(data_dir, key, deadline).map(Client::from)
    }

    /// Sets the server, the CA file to trust and the device token. The
    /// token names the device; this install then authors its changes under
    /// an actor id that starts with the device id, which is what the server
    /// accepts from this device. `area` and `user` are what new records are
    /// filed under until enrolment (issue 4) provides them.
    pub fn configure(
        &self,
        server: &str,
        ca_file: Option<&Path>,
        token: &str,
    ) -> Result<(), ClientError> {
        transport::check_endpoint(server, ca_file)?;
        self.base.store.set_setting("server", server)?;
        if let Some(ca) = ca_file {
            let abs = std::fs::canonicalize(ca).map_err(|e| {
                ClientError::Tls(format!("cannot read CA file {}: {e}", ca.display()))
            })?;
            self.base
                .store
                .set_setting("ca_file", &abs.to_string_lossy())?;
        }
        self.base.store.set_setting("token", token)?;
        // A token set by hand has no known lifetime; enrolment notes it.
        self.base.store.set_setting("token_issued_at", "")?;
        self.base.store.set_setting("token_expires_at", "")?;
        if let Some(device) = device_id_of(token) {
            let actor = self.base.store.setting("actor")?.unwrap_or_default();
            if self.base.store.setting("device_id")?.as_deref() != Some(device.as_str())
                || !actor.starts_with(&device)
            {
                // A few random bytes after the device id keep two installs
                // with the same token from reusing each other's sequence numbers.
                let suffix: [u8; 8] = rand::random();
                let hex: String = suffix.iter().map(|b| format!("{b:02x}")).collect();
                self.base
                    .store
                    .set_setting("actor", &format!("{device}{hex}"))?;
                self.base.store.set_setting("device_id", &device)?;
            }
        }
        Ok(())
    }

    /// Enrols this tablet: the user logs in once (online) and the server
    /// issues the device its own token, tied to the user; the tablet then
    /// files new records under the user and their first area. The password
    /// is not kept.
    ///
    /// A store that already belongs to a device (one whose token expired,
    /// say) asks for that same device again, so the changes it holds keep
    /// their author and stay deliverable. The server refuses that for a
    /// revoked or retired device, or one another user enrolled
    /// ([`ClientError::EnrolRefused`]), and the store is left unchanged.
    pub async fn enroll(
        &self,
        server: &str,
        ca_file: &Path,
        user: &str,
        password: &str,
        device_name: &str,
    ) -> Result<Enrolment, ClientError> {
        let mut body = serde_json::json!({
            "user": user,
            "password": password,
            "device_name": device_name,
        });
        if let Some(device) = self.base.store.setting("device_id")? {
            body["device_id"] = serde_json::Value::String(device);
        }
        let transport::Reply {
            status,
            refusal,
            body: reply,
        } = transport::post_json(server, ca_file, "/v1/enroll", &body.to_string(), None).await?;
        if status == 401 {
            return Err(ClientError::Unauthorized {
                refusal,
                message: reply.trim().to_string(),
            });
        }
        if status == 403 || status == 409 {
            #[derive(serde::Deserialize)]
            struct Refusal {
                error: String,
                rule: String,
            }
            if let Ok(refusal) = serde_json::from_str::<Refusal>(&reply) {
                return Err(ClientError::EnrolRefused {
                    rule: refusal.rule,
                    message: refusal.error,
                });
            }
        }
        if status != 200 {
            return Err(ClientError::Connect {
                url: server.to_string(),
                reason: format!("HTTP {status}: {}", reply.trim()),
            });
        }
        let enrolment: Enrolment =
            serde_json::from_str(&reply).map_err(|e| ClientError::Connect {
                url: server.to_string(),
                reason: format!("unreadable enrolment reply: {e}"),
            })?;
        self.configure(server, Some(ca_file), &enrolment.token)?;
        if let Some(expires) = enrolment.expires_at {
            sync::note_token_life(&self.base.store, sync::now_secs(), expires)?;
        }
        let area = enrolment
            .areas
            .first()
            .cloned()
            .unwrap_or_else(|| "unassigned".into());
        self.set_identity(&enrolment.user, &area)?;
        Ok(enrolment)
    }

    fn endpoint(&self) -> Result<Endpoint, ClientError> {
        let url = self
            .store
            .setting("server")?
            .ok_or(ClientError::NotConfigured)?;
        let token = self
            .store
            .setting("token")?
            .ok_or(ClientError::NotConfigured)?;
        let ca_file = self.base.store.setting("ca_file")?.map(PathBuf::from);
        Ok(Endpoint {
            url,
            ca_file,
            token,
        })
    }

    /// Syncs once: returns when everything local is acknowledged and
    /// everything remote received, or with the reason it could not.
    ///
    /// Then attachments waiting on the tablet are uploaded (their records
    /// have reached the server now), and those the prefetch policy wants
    /// are fetched; `attachments` in the report says what that did. A
    /// failed upload pass does not fail the sync: the attachments stay
    /// queued, counted as waiting.
    pub async fn sync_once(&self, listener: &dyn SyncListener) -> Result<SyncReport, ClientError> {
        let mut report = self.sync_records(listener).await?;
        report.attachments = match self.upload_attachments(listener).await {
            Ok(uploads) => uploads,
            Err(e @ ClientError::Unauthorized { .. }) => return Err(e),
            Err(error) => {
                tracing::warn!(%error, "attachment uploads failed; they stay queued");
                UploadReport {
                    waiting: self.base.store.pending_uploads()?.len() as u64,
                    ..UploadReport::default()
                }
            }
        };
        report.attachments.fetched = self.prefetch_now(listener).await?;
        Ok(report)
    }

    /// Fetches what the prefetch policy wants; bytes not on the server yet
    /// (or a failed fetch) wait for the next sync. The attachments fetched.
    async fn prefetch_now(&self, listener: &dyn SyncListener) -> Result<u64, ClientError> {
        let mut fetched = 0;
        for (id, reference) in self.base.prefetch_wanted()? {
            match self
                .fetch_attachment(&id, &reference.sha256, listener)
                .await
            {
                Ok(_) => fetched += 1,
                Err(e @ ClientError::Unauthorized { .. }) => return Err(e),
                Err(error) => {
                    tracing::info!(record = %id, %error, "prefetch left for the next sync");
                }
            }
        }
        Ok(fetched)
    }

    /// [`sync_once`](Self::sync_once) for the records only: attachments
    /// stay queued for [`upload_attachments`](Self::upload_attachments)
    /// (an app on a metered link, say, that sends photos later).
    pub async fn sync_records(
        &self,
        listener: &dyn SyncListener,
    ) -> Result<SyncReport, ClientError> {
        let endpoint = self.endpoint()?;
        let (_tx, mut stop) = watch::channel(false);
        listener.on_event(SyncEvent::Connecting { attempt: 1 });
        sync::run_connection(
            &self.base.store,
            &endpoint,
            &self.limits,
            Mode::Once,
            &self.base.local_edits,
            &mut stop,
            listener,
        )
        .await
    }

    /// Uploads the attachments waiting on the tablet, resuming each where
    /// the server's copy ends. One pass; the background sync repeats it.
    pub async fn upload_attachments(
        &self,
        listener: &dyn SyncListener,
    ) -> Result<UploadReport, ClientError> {
        let endpoint = self.endpoint()?;
        let mut sizer = self.sizer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let pass =
            attachments::upload_pending(&self.base.store, &endpoint, &mut sizer, listener).await;
        *self.sizer.lock().unwrap_or_else(|p| p.into_inner()) = sizer;
        pass
    }

    /// The bytes of attachment `sha256` of record `id`: from the tablet if
    /// they are here, else fetched from the server (resuming a cut
    /// download where it stopped), checked against the digest, and kept.
    pub async fn fetch_attachment(
        &self,
        id: &str,
        sha256: &str,
        listener: &dyn SyncListener,
    ) -> Result<Vec<u8>, ClientError> {
        let doc_id = crate::base::parse_id(id)?;
        let digest = crate::base::parse_sha(sha256)?;
        let size = self
            .base
            .attachments(id)?
            .into_iter()
            .find(|a| a.reference.sha256 == sha256)
            .map(|a| a.reference.size_bytes)
            .ok_or_else(|| ClientError::NotFound(format!("{id} attachment {sha256}")))?;
        if let Some(bytes) = self.base.attachment_bytes(id, sha256)? {
            return Ok(bytes);
        }
        let endpoint = self.endpoint()?;
        attachments::fetch(&self.base.store, &endpoint, doc_id, &digest, size, listener).await
    }

    /// Starts syncing in the background (live changes, reconnect with
    /// backoff) on the current tokio runtime.
    pub fn start_background(
        &self,
        listener: Arc<dyn SyncListener>,
    ) -> Result<BackgroundSync, ClientError> {
        let endpoint = self.endpoint()?;
        let (stop, stop_rx) = watch::channel(false);
        let uploads = tokio::spawn(attachments::run_uploader(
            self.base.store.clone(),
            endpoint.clone(),
            self.base.attachments_added.clone(),
            stop_rx.clone(),
            listener.clone(),
        ));
        let task = tokio::spawn(sync::run_background(
            self.base.store.clone(),
            endpoint,
            self.limits.clone(),
            self.base.local_edits.clone(),
            stop_rx,
            listener,
        ));
        Ok(BackgroundSync {
            stop,
            task,
            uploads,
        })
    }
}

/// The device id a token carries (`bz_<device id>_<secret>`), if any.
fn device_id_of(token: &str) -> Option<String> {
    let rest = token.strip_prefix("bz_")?;
    let (id, secret) = rest.split_once('_')?;
    (id.len() == 32 && !secret.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| id.to_ascii_lowercase())
}
