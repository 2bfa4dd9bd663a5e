//! The review desk's common starting point, built once here because
//! every review test (API, browser, forgery) starts from the same story:
//! a conflicted meeting submitted for review.

use crate::server_process::ServerProcess;
use crate::tablet::Tablet;

/// The review desk's starting point: a server with an officer, a liaison
/// and a supervisor (`sgt.wanjiru`) of kibera, and a meeting the liaison
/// and the officer placed differently while offline (a conflict on
/// `place`), submitted for review but not yet synced.
pub struct ReviewWorld {
    /// The server.
    pub server: ServerProcess,
    /// `cpl.otieno`'s tablet.
    pub officer: Tablet,
    /// `lia.achieng`'s tablet.
    pub liaison: Tablet,
    /// The conflicted meeting's id.
    pub meeting: String,
    _tmp: tempfile::TempDir,
}

impl ReviewWorld {
    /// Sets it up.
    pub async fn open() -> ReviewWorld {
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let server = ServerProcess::start(&tmp.path().join("server"));
        server.add_user("cpl.otieno", "officer", &["kibera"]);
        server.add_user("lia.achieng", "liaison", &["kibera"]);
        server.add_user("sgt.wanjiru", "supervisor", &["kibera"]);
        let officer = Tablet::for_user(&server, "officer's tablet", "cpl.otieno", "kibera");
        let liaison = Tablet::for_user(&server, "liaison's tablet", "lia.achieng", "kibera");
        let title = ("title".to_string(), "Street lighting baraza".to_string());
        let meeting = liaison
            .create_record("meeting", "kibera", vec![title])
            .expect("create the meeting");
        liaison.sync().await;
        officer.sync().await;
        liaison
            .set(&meeting, "place", "Chief's camp")
            .expect("set the place");
        officer
            .set(&meeting, "place", "Social hall")
            .expect("set the place");
        liaison.submit(&meeting).expect("submit the meeting");
        ReviewWorld {
            server,
            officer,
            liaison,
            meeting,
            _tmp: tmp,
        }
    }
}
