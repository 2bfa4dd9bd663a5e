//! The server's data directory: where the embedded database, the
//! development TLS files and the admin socket live, so the layout stays in
//! a single file (the embedded backend, `storage::sled`, opens the
//! database in it).
//!
//! Layout:
//! - `DIR/db/`        the embedded database (everything the server keeps)
//! - `DIR/tls/`       generated development CA and certificate, if used
//! - `DIR/attachments/` attachments' bytes (`whole/`, `partial/`)
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
        /// The lock failure as the backend reported it.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
        /// What the backend reported.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database opened, but its stores could not be.
    #[error("cannot open the stores in the database")]
    Store(#[from] crate::storage::store::StoreError),
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

    /// Where attachments' bytes are kept, as files named by their digest.
    pub fn attachments_dir(&self) -> PathBuf {
        self.root.join("attachments")
    }

    /// The running server's admin socket.
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("admin.sock")
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
