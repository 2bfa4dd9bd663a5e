//! What the server keeps: one trait per concern, the [`Storage`] bundle
//! of them that the engine and the registries are handed, the data
//! directory, and the checks that refuse damaged data.
//!
//! The rule: every storage trait lives here, in the file of its concern,
//! beside the types it keeps ([`store::Store`]: documents and the feed;
//! [`users::UserStore`]; [`devices::DeviceStore`]; [`audit::AuditStore`]:
//! where the audit log's entries are kept, while [`audit::AuditLog`] is
//! the hash chain over it; [`sessions::SessionStore`]: review desk
//! sessions; [`throttles::ThrottleStore`]: login attempt counts;
//! [`attachments::AttachmentStore`]: attachments' bytes). Every
//! call can fail with a [`store::StoreError`], which carries the backend's
//! own error without naming its type. The rules over them (`identity`,
//! `engine`, `api`) know only the traits.
//!
//! Only [`sled`] knows sled: it implements every trait and opens the
//! bundle from a data directory ([`sled::open`]). Only [`postgres`] knows
//! PostgreSQL, its sibling for several nodes on one database. Storage depends on nothing above it.

use std::sync::Arc;

pub mod attachments;
pub mod audit;
pub mod catch_up;
#[cfg(test)]
pub(crate) mod conformance;
pub mod data_dir;
pub mod devices;
pub mod integrity;
pub mod notices;
pub mod postgres;
pub mod sessions;
pub mod sled;
pub mod store;
pub mod throttles;
pub mod users;

/// Which backend keeps the server's data: sled under the data directory
/// (the embedded default) or a PostgreSQL database.
#[derive(Clone, PartialEq, Eq, Default)]
pub enum StoreChoice {
    /// sled in `DATA/db`.
    #[default]
    Sled,
    /// The PostgreSQL database at this URL (`postgres://USER@HOST/DB`).
    Postgres(String),
}

impl StoreChoice {
    /// `sled`, or a `postgres://` (or `postgresql://`) URL; None for
    /// anything else.
    pub fn parse(text: &str) -> Option<StoreChoice> {
        let text = text.trim();
        if text == "sled" {
            Some(StoreChoice::Sled)
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Some(StoreChoice::Postgres(text.to_string()))
        } else {
            None
        }
    }

    /// What may be shown or logged of it: a password in the URL is
    /// replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            StoreChoice::Sled => "sled".into(),
            StoreChoice::Postgres(url) => {
                let Some((scheme, rest)) = url.split_once("://") else {
                    return "postgres://***".into();
                };
                match rest.split_once('@') {
                    Some((user, host)) => match user.split_once(':') {
                        Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
                        None => url.clone(),
                    },
                    None => url.clone(),
                }
            }
        }
    }
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Opens every store of the chosen backend, for a tool or an admin
/// command. sled's lives in `data`; PostgreSQL's in its database.
pub fn open(
    choice: &StoreChoice,
    data: &data_dir::DataDir,
) -> Result<Storage, data_dir::DataDirError> {
    match choice {
        StoreChoice::Sled => sled::open(data),
        StoreChoice::Postgres(url) => Ok(postgres::open(url)?),
    }
}

/// What a backend does for all its stores at once.
pub trait Backend: Send + Sync {
    /// Makes every earlier write of every store durable.
    fn flush(&self) -> Result<(), store::StoreError>;
    /// What other writers of the backend do, from now on, for as long as
    /// the backend is open; None for a backend only this process writes
    /// (sled), which has nothing to tell.
    fn listen(&self) -> Option<std::sync::mpsc::Receiver<notices::Notice>> {
        None
    }
}

/// Every store of one backend, opened together. Cheap to clone; clones
/// share the stores.
#[derive(Clone)]
pub struct Storage {
    /// Documents, the feed and the record index.
    pub docs: Arc<dyn store::Store>,
    /// Users.
    pub users: Arc<dyn users::UserStore>,
    /// Devices and their token hashes.
    pub devices: Arc<dyn devices::DeviceStore>,
    /// The audit log's entries.
    pub audit: Arc<dyn audit::AuditStore>,
    /// Review desk sessions.
    pub sessions: Arc<dyn sessions::SessionStore>,
    /// Login attempt counts.
    pub throttles: Arc<dyn throttles::ThrottleStore>,
    /// Attachments' bytes.
    pub attachments: Arc<dyn attachments::AttachmentStore>,
    /// The backend as a whole.
    pub backend: Arc<dyn Backend>,
}

impl Storage {
    /// Makes every earlier write of every store durable.
    pub fn flush(&self) -> Result<(), store::StoreError> {
        self.backend.flush()
    }

    /// Ends a use of the stores that wrote no documents (an admin command):
    /// flushes, and if the store was stopped cleanly before it was opened,
    /// marks it so again, so tablets are not made to re-offer everything.
    pub fn close_unchanged(&self) -> Result<(), store::StoreError> {
        if self.docs.opened_clean() {
            self.docs.close_cleanly()?;
        }
        self.flush()
    }
}
