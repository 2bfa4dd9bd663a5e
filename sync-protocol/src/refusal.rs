//! Why the server refused to let a device in, as a code a client can
//! switch on. The reason travels in the [`REFUSAL_HEADER`] response header
//! of a 401 or 503, beside the human-readable body, so that no client ever
//! has to read meaning out of message text.

use std::fmt;

/// The response header that carries a [`AuthRefusal`]'s code.
pub const REFUSAL_HEADER: &str = "baraza-refusal";

/// Why a request with a device token was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthRefusal {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// The token matches no device.
    UnknownToken,
    /// The device was reported lost or stolen: wipe without uploading.
    Revoked,
    /// The device was retired and has wiped: enrol again.
    Retired,
    /// The token's lifetime passed without a rotation: enrol again.
    Expired,
    /// The device's user is unknown or disabled, or it has none.
    NoUser,
    /// A user's name and password were refused at enrolment (which of
    /// them, or whether the account is locked, is not said).
    LoginRefused,
    /// The server cannot answer now (storage, capacity, shutting down):
    /// try again later.
    Unavailable,
}

impl AuthRefusal {
    /// Every code, for tests and documentation.
    pub const ALL: [AuthRefusal; 8] = [
        AuthRefusal::MissingToken,
        AuthRefusal::UnknownToken,
        AuthRefusal::Revoked,
        AuthRefusal::Retired,
        AuthRefusal::Expired,
        AuthRefusal::NoUser,
        AuthRefusal::LoginRefused,
        AuthRefusal::Unavailable,
    ];

    /// The code as the header spells it.
    pub fn code(self) -> &'static str {
        match self {
            AuthRefusal::MissingToken => "missing_token",
            AuthRefusal::UnknownToken => "unknown_token",
            AuthRefusal::Revoked => "revoked",
            AuthRefusal::Retired => "retired",
            AuthRefusal::Expired => "expired",
            AuthRefusal::NoUser => "no_user",
            AuthRefusal::LoginRefused => "login_refused",
            AuthRefusal::Unavailable => "unavailable",
        }
    }

    /// The refusal a header value names; None for a code this build does
    /// not know (a newer server), which a client treats as a plain refusal.
    pub fn from_code(code: &str) -> Option<AuthRefusal> {
        AuthRefusal::ALL
            .into_iter()
            .find(|r| r.code() == code.trim())
    }
}

impl fmt::Display for AuthRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_unknown_codes_as_nothing() {
        for refusal in AuthRefusal::ALL {
            assert_eq!(AuthRefusal::from_code(refusal.code()), Some(refusal));
        }
        assert_eq!(
            AuthRefusal::from_code(" revoked "),
            Some(AuthRefusal::Revoked)
        );
        assert_eq!(AuthRefusal::from_code("Revoked"), None);
        assert_eq!(AuthRefusal::from_code("quarantined"), None);
    }
}
