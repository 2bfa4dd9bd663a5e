//! The server's data directory: where the database, the development TLS
//! files and the admin socket live, and the one place that opens the
//! database so the layout stays in a single file.
//!
//! Layout:
//! - `DIR/db/`        the sled database (documents and devices)
//! - `DIR/tls/`       generated development CA and certificate, if used
//! - `DIR/admin.sock` the running server's admin socket

use std::io;
use std::path::{Path, PathBuf};

/// Failures opening the data directory or its database.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created.
    #[error("cannot create data directory {path}")]
    Create {
        /// The directory we tried to create.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// Another process (normally a running server) holds the database lock.
    #[error("data directory {path} is in use by another process (is a server running on it?)")]
    Busy {
        /// The data directory.
        path: PathBuf,
        /// The lock failure as sled reported it.
        #[source]
        source: sled::Error,
    },
    /// The database library panicked while opening it: its files are
    /// damaged in a way it does not report as an error.
    #[error("the database in {path} is damaged (the storage library failed while opening it: {message}); see README's recovery section")]
    Damaged {
        /// The data directory.
        path: PathBuf,
        /// What the library said.
        message: String,
    },
    /// The database could not be opened for another reason.
    #[error("cannot open database in {path}")]
    Open {
        /// The data directory.
        path: PathBuf,
        /// What sled reported.
        #[source]
        source: sled::Error,
    },
}

/// A data directory that exists on disk.
#[derive(Clone, Debug)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Creates `root` (and parents) if missing and returns a handle to it.
    ///
    /// New directories get mode 0700: the directory holds a private key, the
    /// device token hashes and an unauthenticated admin socket, so other
    /// local users must not be able to reach into it.
    pub fn create(root: &Path) -> Result<DataDir, DataDirError> {
        create_private_dir(root).map_err(|source| DataDirError::Create {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the generated development TLS files go.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }

    /// The running server's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
    }

    /// Opens the database, taking sled's exclusive lock on it.
    pub fn open_db(&self) -> Result<sled::Db, DataDirError> {
        let path = self.root.join("db");
        // sled asserts on some damage instead of returning an error.
        let opened = std::panic::catch_unwind(|| sled::Config::new().path(&path).open()).map_err(
            |payload| DataDirError::Damaged {
                path: self.root.clone(),
                message: payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default(),
            },
        )?;
        opened.map_err(|source| {
            if is_lock_error(&source) {
                DataDirError::Busy {
                    path: self.root.clone(),
                    source,
                }
            } else {
                DataDirError::Open {
                    path: self.root.clone(),
                    source,
                }
            }
        })
    }
}

/// Creates a directory tree whose newly made directories are private.
pub(crate) fn create_private_dir(path: &Path) -> io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

/// sled 0.34 reports a held lock only as an `io::ErrorKind::Other` with this
/// message (see its `Config::try_lock`), so the text is all there is to match.
fn is_lock_error(error: &sled::Error) -> bool {
    match error {
        sled::Error::Io(io) => io.to_string().contains("could not acquire lock"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_of_the_same_directory_reports_busy() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::create(&tmp.path().join("data")).unwrap();
        let _db = dir.open_db().unwrap();
        let second = dir.open_db();
        assert!(
            matches!(second, Err(DataDirError::Busy { .. })),
            "{second:?}"
        );
    }
}
