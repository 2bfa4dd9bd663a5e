//! The SDK's error type: one enum, with messages a person can act on.
//! Shared by both layers (so an app matches one type), which is why it
//! names network failures the base layer never returns.

/// Anything an SDK call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The local store failed (disk full, permissions, corruption).
    #[error("local store: {0}")]
    Store(#[from] sled::Error),
    /// A stored value could not be read back.
    #[error("local store holds a corrupt {what}: {reason}")]
    Corrupt {
        /// What was being read.
        what: &'static str,
        /// Why it failed.
        reason: String,
    },
    /// No record with this id on this device.
    #[error("no record {0} on this device")]
    NotFound(String),
    /// A record id that does not parse.
    #[error("{0:?} is not a record id")]
    BadId(String),
    /// An edit that does not fit the record (e.g. splicing a non-text field).
    #[error("{message}")]
    BadEdit {
        /// The field (or list, or record kind) the edit was about, for an
        /// app to point at: `place`, `attendees.name`, `kind`.
        field: String,
        /// What is wrong with it, for a person to read.
        message: String,
    },
    /// The device has not been set up with `init` yet.
    #[error("this device is not set up: run `baraza init --server URL --ca FILE --token TOKEN`")]
    NotConfigured,
    /// The server URL does not parse.
    #[error("bad server URL {0:?}: {1}")]
    BadUrl(String, String),
    /// TLS setup failed (CA file unreadable or invalid).
    #[error("TLS: {0}")]
    Tls(String),
    /// Could not reach the server.
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// Where we tried.
        url: String,
        /// Why it failed.
        reason: String,
    },
    /// The server refused the device's token, or a user's login at
    /// enrolment. [`ClientError::auth_refusal`] says why, as a type.
    #[error("the server refused this device: {message}")]
    Unauthorized {
        /// Why, from the code the server sends beside its message.
        refusal: AuthRefusal,
        /// The server's message, for a person.
        message: String,
    },
    /// The server would not enrol this tablet's own device again (it was
    /// revoked or retired, or belongs to another user); nothing on the
    /// tablet was changed.
    #[error("enrolment refused by rule {rule}: {message}")]
    EnrolRefused {
        /// The server's code for why: `device_revoked`, `device_retired`,
        /// `device_of_another_user` or `unknown_device`.
        rule: String,
        /// What the server said.
        message: String,
    },
    /// The device was retired or reported lost: its store is wiped. The
    /// report says what was wiped and what the server never received.
    #[error("this device was {} and its store wiped: {} records, {} never acknowledged by the server", .0.reason, .0.records.len(), .0.unacknowledged.len())]
    Wiped(crate::base::WipeReport),
    /// The sync session failed.
    #[error("sync failed: {0}")]
    Sync(String),
    /// The sync did not finish in time.
    #[error("sync timed out after {0} s without progress")]
    Timeout(u64),
    /// An edit the record's schema does not allow.
    #[error(transparent)]
    Edit(#[from] baraza_records::EditError),
    /// The app supplied a store key of the wrong length.
    #[error("the store key must be 32 bytes, not {0}")]
    KeyLength(usize),
    /// The store was sealed with another key. Nothing was read or changed.
    #[error(
        "wrong key for this tablet's store: it was sealed with another key (nothing was changed)"
    )]
    WrongKey,
    /// The tablet's store is damaged: sled failed or panicked opening it,
    /// a tree cannot be read through, or none of its values opens under
    /// the key its format marker accepts. Never a wrong key (that is
    /// [`ClientError::WrongKey`]); nothing was changed. Also returned when
    /// the open did not finish within its deadline: that open keeps
    /// running on a thread of its own, which cannot be stopped, and every
    /// later open of the same store in this process gets this error at
    /// once (instead of waiting on sled's file lock), so restart the
    /// process before trying again.
    #[error("the tablet's store {} is damaged and was not opened: {reason}", path.display())]
    DamagedStore {
        /// The store's directory (`DATA/store`).
        path: std::path::PathBuf,
        /// What failed, for a person to read.
        reason: String,
    },
    /// The data dir holds records written before stores were encrypted.
    #[error(
        "this tablet's store was written without encryption; it is left untouched: \
         open an empty data dir and sync the records into it"
    )]
    UnsealedStore,
    /// The store was written by a newer version of the SDK.
    #[error("this tablet's store has format {0}, newer than this app reads")]
    StoreFormat(u8),
    /// A local automerge operation failed.
    #[error("document: {0}")]
    Automerge(#[from] automerge::AutomergeError),
}

/// Why the server refused a device or a login (a 401), for an app to
/// switch on. Read from the code in the server's `baraza-refusal` header
/// ([`baraza_protocol::AuthRefusal`]), never from the words of its
/// message.
// Serialize because SyncEvent (which carries it) is; snake_case spells
// each variant as code() does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthRefusal {
    /// The device was reported lost or stolen (its store is wiped).
    Revoked,
    /// The device was handed back and retired.
    Retired,
    /// The device's token outlived its lifetime: enrol again.
    Expired,
    /// The token matches no device, or none was sent.
    UnknownToken,
    /// A user's name and password were refused at enrolment (the server
    /// does not say whether the name, the password or the account was
    /// wrong).
    Login,
    /// The device's user is unknown or disabled, or something else.
    Other,
}

impl AuthRefusal {
    /// The reason a refusal's `baraza-refusal` header value names; a
    /// missing or unknown code (an older or newer server) is `Other`.
    pub(crate) fn from_code(code: Option<&str>) -> AuthRefusal {
        use baraza_protocol::AuthRefusal as Code;
        match code.and_then(Code::from_code) {
            Some(Code::Revoked) => AuthRefusal::Revoked,
            Some(Code::Retired) => AuthRefusal::Retired,
            Some(Code::Expired) => AuthRefusal::Expired,
            Some(Code::UnknownToken | Code::MissingToken) => AuthRefusal::UnknownToken,
            Some(Code::LoginRefused) => AuthRefusal::Login,
            Some(Code::NoUser | Code::Unavailable) | None => AuthRefusal::Other,
        }
    }

    /// A short stable code (`revoked`, `retired`, `expired`,
    /// `unknown_token`, `login`, `other`).
    pub fn code(self) -> &'static str {
        match self {
            AuthRefusal::Revoked => "revoked",
            AuthRefusal::Retired => "retired",
            AuthRefusal::Expired => "expired",
            AuthRefusal::UnknownToken => "unknown_token",
            AuthRefusal::Login => "login",
            AuthRefusal::Other => "other",
        }
    }
}

impl ClientError {
    /// For [`ClientError::Unauthorized`], why the server refused.
    pub fn auth_refusal(&self) -> Option<AuthRefusal> {
        match self {
            ClientError::Unauthorized { refusal, .. } => Some(*refusal),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_the_server_sends_maps_to_a_reason_an_app_switches_on() {
        let cases = [
            (Some("revoked"), AuthRefusal::Revoked),
            (Some("retired"), AuthRefusal::Retired),
            (Some("expired"), AuthRefusal::Expired),
            (Some("unknown_token"), AuthRefusal::UnknownToken),
            (Some("missing_token"), AuthRefusal::UnknownToken),
            (Some("login_refused"), AuthRefusal::Login),
            (Some("no_user"), AuthRefusal::Other),
            (Some("unavailable"), AuthRefusal::Other),
            (Some("a_code_from_a_newer_server"), AuthRefusal::Other),
            // The words of a message mean nothing without the code.
            (None, AuthRefusal::Other),
        ];
        for (code, want) in cases {
            let err = ClientError::Unauthorized {
                refusal: AuthRefusal::from_code(code),
                message: "revoked: words are not the code".into(),
            };
            assert_eq!(err.auth_refusal(), Some(want), "{code:?}");
        }
        // A code added to the protocol needs a case here, so that what an
        // app sees for it is decided, not defaulted.
        for code in baraza_protocol::AuthRefusal::ALL {
            assert!(
                cases.iter().any(|(c, _)| *c == Some(code.code())),
                "no case for the protocol's code {code}"
            );
        }
        assert_eq!(ClientError::WrongKey.auth_refusal(), None);
    }
}
