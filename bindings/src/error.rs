//! [`TabletError`]: the one error an app switches on, mapped from the
//! SDK's typed [`ClientError`] variant by variant (never from message
//! text).

use baraza_client::{AuthRefusal, ClientError};

use crate::types::WipeReport;

/// Anything a [`Tablet`](crate::Tablet) call can fail with. Each variant
/// carries a `detail` for a person (not `message`, which Kotlin
/// exceptions already have); the other fields are for code.
#[derive(Debug, thiserror::Error, uniffi::Error)]
pub enum TabletError {
    /// The server could not be reached (no network, wrong address, the
    /// server down, a timeout connecting). Try again later; nothing is lost.
    #[error("offline: {detail}")]
    Offline {
        /// What failed.
        detail: String,
    },
    /// The server refused the device's token or the user's login.
    /// `reason_code`: `login` (wrong user name or password, or a locked
    /// or disabled account: the server does not say which),
    /// `unknown_token`, `retired`, `other`.
    #[error("unauthorised ({reason_code}): {detail}")]
    Unauthorised {
        /// A stable code to switch on.
        reason_code: String,
        /// What the server said.
        detail: String,
    },
    /// The device was reported lost or stolen: its store was wiped, and
    /// the report says what went (delete the key from the keystore too).
    #[error("revoked: this device was reported lost or stolen and its store wiped")]
    Revoked {
        /// What was wiped.
        report: WipeReport,
    },
    /// The device was handed back: what the server lacked was uploaded,
    /// then its store wiped.
    #[error("retired: this device was retired and its store wiped")]
    Retired {
        /// What was wiped.
        report: WipeReport,
    },
    /// The device's token expired: enrol again on the same store (the
    /// server gives the same device a new token; nothing is lost).
    #[error("expired: {detail}")]
    Expired {
        /// What the server said.
        detail: String,
    },
    /// The store was sealed with another key; nothing was read or changed.
    #[error("wrong key for this tablet's store (nothing was changed)")]
    WrongKey,
    /// The store is damaged (or did not open in time); it was left as it
    /// is. Keep a copy and open an empty data dir: what the server
    /// acknowledged comes back at the next sync.
    #[error("damaged store at {path}: {detail}")]
    DamagedStore {
        /// The store's directory.
        path: String,
        /// What failed.
        detail: String,
    },
    /// The server refused by a rule: an enrolment of this store's device
    /// (`device_revoked`, `device_retired`, `device_of_another_user`,
    /// `unknown_device`).
    #[error("refused by rule {rule}: {detail}")]
    Refused {
        /// The rule's name.
        rule: String,
        /// What the server said.
        detail: String,
    },
    /// The local store failed (disk full, permissions, a corrupt value).
    #[error("storage: {detail}")]
    Storage {
        /// What failed.
        detail: String,
    },
    /// An argument does not fit: `field` names it (`key`, `id`,
    /// `server_url`, `ca_pem`, `kind`, a record field such as `place` or
    /// `attendees.name`).
    #[error("invalid {field}: {detail}")]
    InvalidInput {
        /// The argument or record field at fault.
        field: String,
        /// Why.
        detail: String,
    },
    /// No record with this id on this tablet.
    #[error("no record {id} on this tablet")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The tablet has not been enrolled yet (no server, user or device).
    #[error("this tablet is not enrolled yet")]
    NotEnrolled,
    /// The TLS connection to the server could not be set up or verified.
    #[error("TLS: {detail}")]
    Tls {
        /// What failed.
        detail: String,
    },
    /// The sync stopped making progress for too long.
    #[error("sync timed out after {seconds} s without progress")]
    Timeout {
        /// How long it waited.
        seconds: u64,
    },
    /// The sync session failed (the connection dropped, the server closed
    /// it or sent something it should not). Try again; nothing is lost.
    #[error("sync failed: {detail}")]
    Sync {
        /// What failed.
        detail: String,
    },
    /// A background sync is already running for this tablet.
    #[error("a background sync is already running")]
    AlreadyRunning,
    /// The work was cancelled (the tablet was closed under it).
    #[error("cancelled")]
    Cancelled,
}

impl From<ClientError> for TabletError {
    fn from(err: ClientError) -> TabletError {
        let message = err.to_string();
        match err {
            ClientError::Store(_) | ClientError::Corrupt { .. } | ClientError::Automerge(_) => {
                TabletError::Storage { detail: message }
            }
            ClientError::UnsealedStore | ClientError::StoreFormat(_) => {
                TabletError::Storage { detail: message }
            }
            ClientError::NotFound(id) => TabletError::NotFound { id },
            ClientError::BadId(_) => TabletError::InvalidInput {
                field: "id".into(),
                detail: message,
            },
            ClientError::BadEdit { field, message } => TabletError::InvalidInput {
                field,
                detail: message,
            },
            ClientError::Edit(edit) => edit_error(edit),
            ClientError::NotConfigured => TabletError::NotEnrolled,
            ClientError::BadUrl(..) => TabletError::InvalidInput {
                field: "server_url".into(),
                detail: message,
            },
            ClientError::Tls(message) => TabletError::Tls { detail: message },
            ClientError::Connect { .. } => TabletError::Offline { detail: message },
            ClientError::Unauthorized {
                refusal,
                message: body,
            } => match refusal {
                AuthRefusal::Expired => TabletError::Expired { detail: body },
                reason => TabletError::Unauthorised {
                    reason_code: reason.code().into(),
                    detail: body,
                },
            },
            ClientError::EnrolRefused { rule, message } => TabletError::Refused {
                rule,
                detail: message,
            },
            ClientError::Wiped(report) => {
                let revoked = report.reason == "revoked";
                let report = WipeReport::from(report);
                if revoked {
                    TabletError::Revoked { report }
                } else {
                    TabletError::Retired { report }
                }
            }
            ClientError::Sync(message) => TabletError::Sync { detail: message },
            ClientError::Timeout(seconds) => TabletError::Timeout { seconds },
            ClientError::KeyLength(_) => TabletError::InvalidInput {
                field: "key".into(),
                detail: message,
            },
            ClientError::WrongKey => TabletError::WrongKey,
            ClientError::DamagedStore { path, reason } => TabletError::DamagedStore {
                path: path.display().to_string(),
                detail: reason,
            },
        }
    }
}

/// A schema refusal names its field where it has one.
fn edit_error(edit: baraza_records::EditError) -> TabletError {
    use baraza_records::EditError;
    let message = edit.to_string();
    let field = match &edit {
        EditError::UnknownField { field, .. } | EditError::BadValue { field, .. } => field.clone(),
        EditError::NoItem { field, .. } => field.clone(),
        EditError::Schema(_) => "record".into(),
        EditError::Automerge(_) => return TabletError::Storage { detail: message },
    };
    TabletError::InvalidInput {
        field,
        detail: message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdks_errors_map_to_the_variants_an_app_switches_on() {
        let cases: Vec<(ClientError, &str)> = vec![
            (ClientError::WrongKey, "WrongKey"),
            (ClientError::KeyLength(16), "InvalidInput(key)"),
            (ClientError::NotConfigured, "NotEnrolled"),
            (
                ClientError::Unauthorized {
                    refusal: AuthRefusal::Expired,
                    message: "this device's token expired".into(),
                },
                "Expired",
            ),
            (
                ClientError::Unauthorized {
                    refusal: AuthRefusal::Login,
                    message: "wrong user name or password".into(),
                },
                "Unauthorised(login)",
            ),
            (
                ClientError::EnrolRefused {
                    rule: "device_revoked".into(),
                    message: "no".into(),
                },
                "Refused(device_revoked)",
            ),
            (
                ClientError::Connect {
                    url: "https://127.0.0.1:1".into(),
                    reason: "refused".into(),
                },
                "Offline",
            ),
            (
                ClientError::BadEdit {
                    field: "attendees.nme".into(),
                    message: "no such field".into(),
                },
                "InvalidInput(attendees.nme)",
            ),
        ];
        for (err, want) in cases {
            let got = match TabletError::from(err) {
                TabletError::WrongKey => "WrongKey".to_string(),
                TabletError::NotEnrolled => "NotEnrolled".to_string(),
                TabletError::Expired { .. } => "Expired".to_string(),
                TabletError::Offline { .. } => "Offline".to_string(),
                TabletError::InvalidInput { field, .. } => format!("InvalidInput({field})"),
                TabletError::Unauthorised { reason_code, .. } => {
                    format!("Unauthorised({reason_code})")
                }
                TabletError::Refused { rule, .. } => format!("Refused({rule})"),
                other => format!("{other:?}"),
            };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_wipe_is_revoked_or_retired_by_its_reason() {
        let report = |reason: &str| baraza_client::WipeReport {
            reason: reason.into(),
            records: vec!["a".into()],
            unacknowledged: vec![],
        };
        assert!(matches!(
            TabletError::from(ClientError::Wiped(report("revoked"))),
            TabletError::Revoked { report } if report.records == ["a"]
        ));
        assert!(matches!(
            TabletError::from(ClientError::Wiped(report("retired"))),
            TabletError::Retired { .. }
        ));
    }
}
