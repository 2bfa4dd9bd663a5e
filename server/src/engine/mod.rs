//! The sync engine: the hub every session and desk action goes through,
//! admission of changes, the live-document cache, the feed view, the desk's
//! author and the eraser. Returns typed views; `api` renders them.

pub mod attachments;
pub mod docs;
pub mod hub;
pub mod recent;
pub mod view;
