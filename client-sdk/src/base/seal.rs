//! Sealing of the values the local store writes: XChaCha20-Poly1305 under
//! the key the app supplies, a fresh random 24-byte nonce per value.
//!
//! A sealed value is `version (1) | nonce (24) | ciphertext | tag (16)`.
//! The associated data names where the value lives (its tree and its sled
//! key), so a value copied to another record, another chunk position or
//! another setting fails to open instead of being read as that one.
//!
//! What stays in the clear: tree names, sled keys (record ids, setting
//! names) and the length of each value. Not covered: putting back an older
//! value at the same place (a rollback by someone who can write the files).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::error::ClientError;

/// Length of the key the app supplies.
pub const KEY_LEN: usize = 32;
/// Format of a sealed value; bumped if the layout or cipher ever changes.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Bytes a sealed value takes beyond its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Seals and opens values under one key. Holds the key only inside the
/// cipher, which wipes it on drop; its `Debug` shows nothing of it. Not
/// `Clone`, so the key is not copied around: share it behind an `Arc`.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

/// A value that does not open under this key at this place: another key,
/// moved from elsewhere, truncated or altered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stored value does not authenticate (wrong key, moved or altered)")]
pub struct Unsealable;

/// The associated data: the format version, then the tree name
/// length-prefixed so that (`ab`, `c`) and (`a`, `bc`) differ, then the key.
fn associated(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(2 + tree.len() + key.len());
    ad.push(VERSION);
    // Tree names are short constants of this crate.
    ad.push(tree.len().min(u8::MAX as usize) as u8);
    ad.extend_from_slice(tree.as_bytes());
    ad.extend_from_slice(key);
    ad
}

impl Sealer {
    /// A sealer for a 32-byte key; any other length is refused.
    pub fn new(key: &[u8]) -> Result<Sealer, ClientError> {
        if key.len() != KEY_LEN {
            return Err(ClientError::KeyLength(key.len()));
        }
        let cipher = XChaCha20Poly1305::new_from_slice(key)
            .map_err(|_| ClientError::KeyLength(key.len()))?;
        Ok(Sealer { cipher })
    }

    /// Seals `plain`, bound to `tree` and `key`.
    pub fn seal(&self, tree: &str, key: &[u8], plain: &[u8]) -> Result<Vec<u8>, ClientError> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = associated(tree, key);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            // Only fails for plaintexts beyond 256 GiB.
            .map_err(|_| ClientError::Corrupt {
                what: "value to seal",
                reason: format!("{} bytes is too large to seal", plain.len()),
            })?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Opens a value sealed by [`seal`](Self::seal) for the same `tree` and `key`.
    pub fn open(&self, tree: &str, key: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Unsealable> {
        if sealed.len() < OVERHEAD || sealed[0] != VERSION {
            return Err(Unsealable);
        }
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        let aad = associated(tree, key);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| Unsealable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(fill: u8) -> Sealer {
        Sealer::new(&[fill; KEY_LEN]).unwrap()
    }

    #[test]
    fn a_value_opens_where_it_was_sealed() {
        let s = sealer(7);
        let sealed = s.seal("docs", b"record-1", b"Market baraza").unwrap();
        assert_eq!(sealed.len(), b"Market baraza".len() + OVERHEAD);
        assert_eq!(
            s.open("docs", b"record-1", &sealed).unwrap(),
            b"Market baraza"
        );
        // Empty values (the `unacked` markers) seal too.
        let empty = s.seal("unacked", b"record-1", b"").unwrap();
        assert_eq!(s.open("unacked", b"record-1", &empty).unwrap(), b"");
    }

    #[test]
    fn the_plaintext_is_not_in_the_sealed_bytes_and_nonces_differ() {
        let s = sealer(7);
        let phrase = b"street lighting on Juja road";
        let a = s.seal("docs", b"r", phrase).unwrap();
        let b = s.seal("docs", b"r", phrase).unwrap();
        assert_ne!(a, b, "the same value sealed twice must differ");
        assert!(!a.windows(phrase.len()).any(|w| w == phrase));
    }

    #[test]
    fn another_key_does_not_open_it() {
        let sealed = sealer(7).seal("meta", b"setting/token", b"bz_x_y").unwrap();
        assert_eq!(
            sealer(8).open("meta", b"setting/token", &sealed),
            Err(Unsealable)
        );
    }

    #[test]
    fn a_value_moved_to_another_place_does_not_open() {
        let s = sealer(7);
        let sealed = s.seal("docs", b"record-1", b"notes").unwrap();
        assert_eq!(s.open("docs", b"record-2", &sealed), Err(Unsealable));
        assert_eq!(s.open("chunks", b"record-1", &sealed), Err(Unsealable));
        // The length prefix keeps tree and key apart.
        let split = s.seal("ab", b"c", b"v").unwrap();
        assert_eq!(s.open("a", b"bc", &split), Err(Unsealable));
    }

    #[test]
    fn any_altered_byte_or_truncation_is_refused() {
        let s = sealer(7);
        let sealed = s.seal("docs", b"r", b"patrol notes").unwrap();
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(s.open("docs", b"r", &bad), Err(Unsealable), "byte {i}");
        }
        assert_eq!(
            s.open("docs", b"r", &sealed[..sealed.len() - 1]),
            Err(Unsealable)
        );
        assert_eq!(
            s.open("docs", b"r", &sealed[..OVERHEAD - 1]),
            Err(Unsealable)
        );
    }

    #[test]
    fn keys_of_the_wrong_length_are_refused() {
        for len in [0, 16, 31, 33, 64] {
            assert!(matches!(
                Sealer::new(&vec![1; len]),
                Err(ClientError::KeyLength(n)) if n == len
            ));
        }
    }
}
