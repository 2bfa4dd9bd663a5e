//! Why the server refused to let a device in, as a code a client can
//! switch on. The reason travels in the [`REFUSAL_HEADER`] response header
//! of a 401 or 503, beside the human-readable body, so that no client ever
//! has to read meaning out of message text.

use std::fmt;

/// The response header that carries a [`Refusal`]'s code.
pub const REFUSAL_HEADER: &str = "baraza-refusal";

/// Why a request with a device token was turned away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
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
    /// The server cannot answer now (storage, capacity, shutting down):
    /// try again later.
    Unavailable,
}

impl Refusal {
    /// Every code, for tests and documentation.
    pub const ALL: [Refusal; 7] = [
        Refusal::MissingToken,
        Refusal::UnknownToken,
        Refusal::Revoked,
        Refusal::Retired,
        Refusal::Expired,
        Refusal::NoUser,
        Refusal::Unavailable,
    ];

    /// The code as the header spells it.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::MissingToken => "missing_token",
            Refusal::UnknownToken => "unknown_token",
            Refusal::Revoked => "revoked",
            Refusal::Retired => "retired",
            Refusal::Expired => "expired",
            Refusal::NoUser => "no_user",
            Refusal::Unavailable => "unavailable",
        }
    }

    /// The refusal a header value names; None for a code this build does
    /// not know (a newer server), which a client treats as a plain refusal.
    pub fn from_code(code: &str) -> Option<Refusal> {
        Refusal::ALL.into_iter().find(|r| r.code() == code.trim())
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_reads_back_as_itself_and_unknown_codes_as_nothing() {
        for refusal in Refusal::ALL {
            assert_eq!(Refusal::from_code(refusal.code()), Some(refusal));
        }
        assert_eq!(Refusal::from_code(" revoked "), Some(Refusal::Revoked));
        assert_eq!(Refusal::from_code("Revoked"), None);
        assert_eq!(Refusal::from_code("quarantined"), None);
    }
}
