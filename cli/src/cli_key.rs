//! Where the `baraza` command-line tablet gets the key that seals its store
//! (part of the binary, not of the SDK: an app takes its key from the
//! platform keystore instead).
//!
//! Either a key file (32 raw bytes, or 64 hex digits and optional
//! whitespace), or a passphrase stretched with argon2id. The argon2
//! parameters and salt live in `DATA/key-salt`, in the clear: they are not
//! secret, and without them the passphrase gives no key.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use baraza_client::KEY_LEN;
use zeroize::Zeroizing;

/// The file beside the store holding the argon2 parameters and salt.
pub const SALT_FILE: &str = "key-salt";
const SALT_LEN: usize = 16;

/// How a key reaches the store.
pub enum KeySource<'a> {
    /// A key file.
    File(&'a Path),
    /// A passphrase from the terminal, or a line of standard input.
    Passphrase,
}

/// The store key for the data dir `data`. `setting_up` is true for the
/// verbs that set a tablet up (`init`, `enroll`): only they may create a
/// missing key file or salt, and only while the data dir has no store yet,
/// so an existing store never silently gets a new key.
pub fn store_key(
    data: &Path,
    source: KeySource<'_>,
    setting_up: bool,
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let fresh = setting_up && !data.join("store").exists();
    match source {
        KeySource::File(path) => {
            if inside(path, data) {
                eprintln!(
                    "warning: key file {} is inside the data dir: a copy of the data dir \
                     carries its key; keep the key elsewhere",
                    path.display()
                );
            }
            from_file(path, fresh)
        }
        KeySource::Passphrase => from_passphrase(data, fresh),
    }
}

/// Whether `path` lies under `dir`, compared as absolute paths (either may
/// not exist yet).
fn inside(path: &Path, dir: &Path) -> bool {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .ok()
            .map(|a| a.components().collect::<PathBuf>())
    };
    match (abs(path), abs(dir)) {
        (Some(path), Some(dir)) => path.starts_with(dir),
        _ => false,
    }
}

fn from_file(path: &Path, fresh: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => parse_key_file(&Zeroizing::new(bytes))
            .with_context(|| format!("key file {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && fresh => create_key_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "key file {} does not exist (`baraza init` or `enroll` creates one for a new tablet)",
            path.display()
        ),
        Err(e) => Err(e).with_context(|| format!("cannot read key file {}", path.display())),
    }
}

/// 32 raw bytes, or 64 hex digits with surrounding whitespace. The content
/// never appears in an error.
fn parse_key_file(bytes: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    if bytes.len() == KEY_LEN {
        return Ok(Zeroizing::new(bytes.to_vec()));
    }
    let text = bytes.trim_ascii();
    if text.len() == 2 * KEY_LEN {
        let decoded: Option<Vec<u8>> = text
            .chunks_exact(2)
            .map(|pair| {
                let hi = (pair[0] as char).to_digit(16)?;
                let lo = (pair[1] as char).to_digit(16)?;
                Some((hi * 16 + lo) as u8)
            })
            .collect();
        if let Some(key) = decoded {
            return Ok(Zeroizing::new(key));
        }
    }
    bail!(
        "must hold {KEY_LEN} raw bytes or {} hex digits ({} bytes found)",
        2 * KEY_LEN,
        bytes.len()
    )
}

/// Writes a new random key as hex, readable by its owner only, and never
/// over an existing file.
fn create_key_file(path: &Path) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let key = Zeroizing::new(rand::random::<[u8; KEY_LEN]>().to_vec());
    let mut hex = Zeroizing::new(String::with_capacity(2 * KEY_LEN + 1));
    for b in key.iter() {
        hex.push_str(&format!("{b:02x}"));
    }
    hex.push('\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create key file {}", path.display()))?;
    file.write_all(hex.as_bytes())
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write key file {}", path.display()))?;
    eprintln!(
        "created key file {}: keep it safe and apart from the data; without it \
         the records on this tablet cannot be read",
        path.display()
    );
    Ok(key)
}

/// Argon2id parameters and salt, as kept in [`SALT_FILE`].
struct Stretch {
    m_kib: u32,
    t: u32,
    p: u32,
    salt: Vec<u8>,
}

impl Stretch {
    fn new() -> Stretch {
        let d = argon2::Params::default();
        Stretch {
            m_kib: d.m_cost(),
            t: d.t_cost(),
            p: d.p_cost(),
            salt: rand::random::<[u8; SALT_LEN]>().to_vec(),
        }
    }

    fn to_line(&self) -> String {
        let salt: String = self.salt.iter().map(|b| format!("{b:02x}")).collect();
        format!(
            "argon2id m={} t={} p={} salt={salt}\n",
            self.m_kib, self.t, self.p
        )
    }

    fn parse(line: &str) -> Option<Stretch> {
        let mut parts = line.split_whitespace();
        if parts.next()? != "argon2id" {
            return None;
        }
        let (mut m_kib, mut t, mut p, mut salt) = (None, None, None, None);
        for part in parts {
            let (name, value) = part.split_once('=')?;
            match name {
                "m" => m_kib = value.parse().ok(),
                "t" => t = value.parse().ok(),
                "p" => p = value.parse().ok(),
                "salt" => {
                    salt = (0..value.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(value.get(i..i + 2)?, 16).ok())
                        .collect::<Option<Vec<u8>>>()
                }
                _ => return None,
            }
        }
        Some(Stretch {
            m_kib: m_kib?,
            t: t?,
            p: p?,
            salt: salt.filter(|s| s.len() >= 8)?,
        })
    }

    fn key(&self, passphrase: &[u8]) -> anyhow::Result<Zeroizing<Vec<u8>>> {
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(KEY_LEN))
            .map_err(|e| anyhow::anyhow!("bad argon2 parameters: {e}"))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = Zeroizing::new(vec![0u8; KEY_LEN]);
        argon
            .hash_password_into(passphrase, &self.salt, &mut key)
            .map_err(|e| anyhow::anyhow!("cannot derive the key: {e}"))?;
        Ok(key)
    }
}

fn from_passphrase(data: &Path, fresh: bool) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let salt_path: PathBuf = data.join(SALT_FILE);
    let (stretch, new) = match std::fs::read_to_string(&salt_path) {
        Ok(text) => (
            Stretch::parse(&text)
                .with_context(|| format!("{} is not a key salt file", salt_path.display()))?,
            false,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && fresh => (Stretch::new(), true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && data.join("store").exists() => bail!(
            "{} is missing, so no passphrase can open this tablet's store: give the key file \
             it was set up with (--key-file FILE or BARAZA_KEY_FILE)",
            salt_path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this device is not set up: run `baraza init` (with --key-file FILE, or a \
             passphrase) first"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", salt_path.display())),
    };
    let passphrase = read_passphrase(data, new)?;
    let key = stretch.key(passphrase.as_bytes())?;
    if new {
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        std::fs::write(&salt_path, stretch.to_line())
            .with_context(|| format!("cannot write {}", salt_path.display()))?;
    }
    Ok(key)
}

/// From the terminal without echo (twice for a new store), or else the
/// first line of standard input.
fn read_passphrase(data: &Path, new: bool) -> anyhow::Result<Zeroizing<String>> {
    let passphrase = if std::io::stdin().is_terminal() {
        let prompt = format!("Passphrase for the tablet store in {}: ", data.display());
        let first = Zeroizing::new(rpassword::prompt_password(&prompt)?);
        if new {
            let again = Zeroizing::new(rpassword::prompt_password("Repeat it: ")?);
            if *again != *first {
                bail!("the passphrases differ");
            }
        }
        first
    } else {
        let mut line = Zeroizing::new(String::new());
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the passphrase from standard input")?;
        Zeroizing::new(line.trim_end_matches(['\r', '\n']).to_string())
    };
    if passphrase.is_empty() {
        bail!(
            "no key: give --key-file FILE (or BARAZA_KEY_FILE), or a passphrase on the \
             terminal or standard input"
        );
    }
    Ok(passphrase)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_hold_raw_bytes_or_hex() {
        let raw = [7u8; KEY_LEN];
        assert_eq!(&parse_key_file(&raw).unwrap()[..], &raw[..]);
        let hex = format!("{}\n", "0a".repeat(KEY_LEN));
        assert_eq!(
            &parse_key_file(hex.as_bytes()).unwrap()[..],
            &[10u8; KEY_LEN][..]
        );
        let err = parse_key_file(b"hunter2").unwrap_err().to_string();
        assert!(!err.contains("hunter2"), "the content leaked: {err}");
        assert!(parse_key_file("zz".repeat(KEY_LEN).as_bytes()).is_err());
    }

    #[test]
    fn the_salt_file_round_trips_and_the_same_passphrase_gives_the_same_key() {
        let s = Stretch {
            m_kib: 64,
            t: 1,
            p: 1,
            salt: vec![3; SALT_LEN],
        };
        let back = Stretch::parse(&s.to_line()).unwrap();
        assert_eq!((back.m_kib, back.t, back.p), (64, 1, 1));
        assert_eq!(back.salt, s.salt);
        let key = back.key(b"correct horse").unwrap();
        assert_eq!(key.len(), KEY_LEN);
        assert_eq!(key, s.key(b"correct horse").unwrap());
        assert_ne!(key, s.key(b"correct horse!").unwrap());
        assert!(Stretch::parse("scrypt salt=00").is_none());
    }
}
