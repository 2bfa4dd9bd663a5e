//! What the server keeps on disk: the data directory, the document and feed
//! store, the audit log, and the checks that refuse a damaged database.
//! The only part of the server that knows sled.

pub mod audit;
pub mod data_dir;
pub mod integrity;
pub mod store;
