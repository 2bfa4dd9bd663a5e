//! Opening the tablet's store under a deadline. A damaged store can make
//! sled 0.34 panic inside its recovery (a log whose segments claim the
//! same place), and damage can leave sled, or the first reads after it,
//! looping without end (a tree scan that yields the same error forever).
//! Neither may take the app down or hang it, so the open runs on a thread
//! of its own, under `catch_unwind`, and the caller waits at most its
//! deadline.
//!
//! A thread stuck inside sled cannot be stopped. It is left running,
//! detached, holding sled's lock on the store's files, and the store is
//! noted as stuck: later opens of it in this process fail at once with
//! [`ClientError::DamagedStore`] instead of racing the stuck thread for
//! the files. If that thread ever ends, it closes what it opened and lifts
//! the note. The app should restart its process before trying again.

use std::any::Any;
use std::collections::BTreeSet;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::ClientError;

/// The name of the thread an open runs on. A panic inside sled is caught
/// there and returned as [`ClientError::DamagedStore`]; a program may use
/// the name to keep its panic hook from also printing it as a crash.
pub const THREAD_NAME: &str = "baraza-store-open";

/// Stores whose open overran its deadline and is still running.
static STUCK: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Where one open stands, shared by the caller and the opening thread so
/// that exactly one of them decides what happens to the result.
enum Attempt {
    /// The caller is waiting.
    Waiting,
    /// The thread has sent its result.
    Answered,
    /// The caller gave up: the thread closes whatever it opened.
    Abandoned,
}

/// A poisoned lock only means a panic elsewhere while it was held; the set
/// and the state stay meaningful, so they are used as they are.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One name per store however the path was spelt, where the file system
/// can say so.
fn identity(store: &Path) -> PathBuf {
    std::fs::canonicalize(store)
        .or_else(|_| std::path::absolute(store))
        .unwrap_or_else(|_| store.to_path_buf())
}

fn damaged(store: &Path, reason: String) -> ClientError {
    ClientError::DamagedStore {
        path: store.to_path_buf(),
        reason,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Runs `open` for the store in `store` on its own thread and returns its
/// result, or [`ClientError::DamagedStore`] if it panicked or did not
/// answer within `deadline`.
pub(super) fn run<T: Send + 'static>(
    store: &Path,
    deadline: Duration,
    open: impl FnOnce() -> Result<T, ClientError> + Send + 'static,
) -> Result<T, ClientError> {
    let id = identity(store);
    if lock(&STUCK).contains(&id) {
        return Err(damaged(
            store,
            "an earlier open of this store in this process overran its deadline and is \
             still running; restart the app before opening it again"
                .into(),
        ));
    }
    let attempt = Arc::new(Mutex::new(Attempt::Waiting));
    let (tx, rx) = mpsc::sync_channel(1);
    let thread_attempt = attempt.clone();
    let thread_store = store.to_path_buf();
    let thread_id = id.clone();
    std::thread::Builder::new()
        .name(THREAD_NAME.into())
        .spawn(move || {
            // Whatever sled left half-built when it panicked is dropped
            // with the unwinding: nothing of it is used again.
            let result = std::panic::catch_unwind(AssertUnwindSafe(open)).unwrap_or_else(|p| {
                let message = panic_message(&*p);
                tracing::warn!(store = %thread_store.display(), "sled panicked opening the store: {message}");
                Err(damaged(
                    &thread_store,
                    format!("sled panicked opening it: {message}"),
                ))
            });
            let mut state = lock(&thread_attempt);
            if let Attempt::Abandoned = *state {
                drop(state);
                // Closes the store nobody waits for any more, before
                // letting other opens at it.
                drop(result);
                lock(&STUCK).remove(&thread_id);
                tracing::warn!(store = %thread_store.display(), "an open given up on has ended");
            } else {
                *state = Attempt::Answered;
                // The channel has room for this one answer; the caller may
                // be gone, and then so is the answer.
                let _ = tx.send(result);
            }
        })
        .map_err(|e| ClientError::Store(sled::Error::Io(e)))?;
    match rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let mut state = lock(&attempt);
            // It may have answered between the timeout and taking the lock.
            if let Ok(result) = rx.try_recv() {
                return result;
            }
            *state = Attempt::Abandoned;
            lock(&STUCK).insert(id);
            drop(state);
            tracing::error!(
                store = %store.display(),
                ?deadline,
                "the store did not open in time; its open is left running"
            );
            Err(damaged(
                store,
                format!(
                    "it did not open within {:.1} s: sled is stuck on its files (or the store \
                     is far larger than the deadline allows). That open cannot be stopped; \
                     restart the app before opening the store again",
                    deadline.as_secs_f64()
                ),
            ))
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(damaged(
            store,
            "the thread opening it ended without an answer".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_stuck_open_fails_at_its_deadline_and_blocks_retries_until_it_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let (release, released) = mpsc::channel::<()>();
        let (closed_tx, closed) = mpsc::channel::<()>();
        /// Stands for the store a stuck open eventually returns; says when
        /// it is dropped.
        struct Opened(mpsc::Sender<()>);
        impl Drop for Opened {
            fn drop(&mut self) {
                let _ = self.0.send(());
            }
        }
        let started = Instant::now();
        let result = run(&store, Duration::from_millis(200), move || {
            let _ = released.recv();
            Ok(Opened(closed_tx))
        });
        assert!(matches!(result, Err(ClientError::DamagedStore { .. })));
        assert!(started.elapsed() < Duration::from_secs(5));

        // A retry fails at once, without running its open.
        let started = Instant::now();
        let retry = run(&store, Duration::from_secs(30), || -> Result<(), _> {
            panic!("a retry must not touch a store whose open is stuck")
        });
        match retry {
            Err(ClientError::DamagedStore { path, reason }) => {
                assert_eq!(path, store);
                assert!(reason.contains("restart"), "{reason}");
            }
            other => panic!("expected DamagedStore, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(1));

        // Once the stuck open ends, what it opened is closed and the store
        // may be opened again.
        release.send(()).unwrap();
        closed.recv_timeout(Duration::from_secs(5)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match run(&store, Duration::from_secs(5), || Ok(7)) {
                Ok(v) => {
                    assert_eq!(v, 7);
                    break;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the store stayed blocked: {e}"),
            }
        }
    }

    #[test]
    fn a_panicking_open_is_a_damaged_store_naming_the_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        // A deadline far past what the panic takes: what is tested is that
        // a panic is answered as damage, not how fast (printing the panic's
        // backtrace, with RUST_BACKTRACE set, takes seconds on a busy machine).
        let result = run(&store, Duration::from_secs(120), || -> Result<(), _> {
            panic!("duplicate segment LSN 0 detected")
        });
        match result {
            Err(ClientError::DamagedStore { path, reason }) => {
                assert_eq!(path, store);
                assert!(reason.contains("duplicate segment LSN 0"), "{reason}");
            }
            other => panic!("expected DamagedStore, got {other:?}"),
        }
        // A panic is an answer, not a stuck open: the next open runs.
        assert_eq!(run(&store, Duration::from_secs(5), || Ok(1)).unwrap(), 1);
    }

    #[test]
    fn errors_and_results_pass_through_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        assert!(matches!(
            run(&store, Duration::from_secs(5), || -> Result<(), _> {
                Err(ClientError::WrongKey)
            }),
            Err(ClientError::WrongKey)
        ));
        assert_eq!(
            run(&store, Duration::from_secs(5), || Ok("ok")).unwrap(),
            "ok"
        );
    }
}
