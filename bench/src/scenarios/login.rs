//! The `login` scenario (issue 10, item 9): whether a refused login's answer
//! time tells a stranger anything. Both doors (`POST /v1/enroll` and the
//! review desk's `POST /review/api/login`) are tried with an unknown name,
//! a real name with a wrong password, and the right passwords of a locked
//! and of a disabled account (and, at the desk, of an officer, whom the
//! desk turns away); a right password that passes is timed beside them
//! for reference. Each round comes from its own loopback address and
//! tries the kinds in a rotated order, so the per-address throttle, the
//! order and the machine's drift weigh on every kind alike.
//!
//! Every refusal must get the same answer (checked: the scenario fails
//! otherwise); the times are reported, not asserted: medians and p90 per
//! kind, and each refusal kind's median against the unknown name's.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use anyhow::ensure;
use serde_json::{json, Value};

use super::{Bench, Outcome};
use crate::light::Connector;
use crate::server::{Server, BENCH_PASSWORD};
use crate::stats::{ms, round3, summary};

/// Measured rounds per door (one unmeasured round comes first).
const ROUNDS: usize = 30;
/// Wrong passwords one account takes before the next is used: under the
/// five that lock it.
const WRONG_PER_ACCOUNT: usize = 4;

/// One kind of login attempt.
struct Kind {
    name: &'static str,
    /// The user name for round `round`.
    user: fn(usize) -> String,
    password: &'static str,
    /// Whether the door should let it through.
    passes: bool,
}

fn kinds(door: Door) -> Vec<Kind> {
    let mut kinds = vec![
        Kind {
            name: "unknown name",
            user: |_| "sgt.nobody".into(),
            password: BENCH_PASSWORD,
            passes: false,
        },
        Kind {
            name: "wrong password",
            user: |round| format!("sgt.wrong{}", round / WRONG_PER_ACCOUNT),
            password: "not the password",
            passes: false,
        },
        Kind {
            name: "locked account",
            user: |_| "sgt.locked".into(),
            password: BENCH_PASSWORD,
            passes: false,
        },
        Kind {
            name: "disabled account",
            user: |_| "sgt.disabled".into(),
            password: BENCH_PASSWORD,
            passes: false,
        },
    ];
    if door == Door::Desk {
        kinds.push(Kind {
            name: "officer at the desk",
            user: |_| "cpl.officer".into(),
            password: BENCH_PASSWORD,
            passes: false,
        });
    }
    kinds.push(Kind {
        name: "right password",
        user: |_| "sgt.right".into(),
        password: BENCH_PASSWORD,
        passes: true,
    });
    kinds
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Door {
    Enrolment,
    Desk,
}

impl Door {
    fn name(self) -> &'static str {
        match self {
            Door::Enrolment => "enrolment",
            Door::Desk => "review desk",
        }
    }

    /// Loopback addresses 127.0.`block`.x are this door's.
    fn block(self) -> u8 {
        match self {
            Door::Enrolment => 1,
            Door::Desk => 2,
        }
    }

    fn request(self, user: &str, password: &str, round: usize) -> (&'static str, String) {
        match self {
            Door::Enrolment => (
                "/v1/enroll",
                json!({
                    "user": user,
                    "password": password,
                    "device_name": format!("login bench {round}"),
                })
                .to_string(),
            ),
            Door::Desk => (
                "/review/api/login",
                json!({ "user": user, "password": password }).to_string(),
            ),
        }
    }
}

impl Bench {
    /// Runs the login timing scenario.
    pub fn login_timing(&self) -> anyhow::Result<Outcome> {
        let dir = self.scenario_dir("login")?;
        let server = Server::start(
            &self.opts.server_bin,
            &dir.join("server-data"),
            &dir.join("server.log"),
        )?;
        let areas = vec!["kibera".to_string()];
        for name in ["sgt.right", "sgt.locked", "sgt.disabled"] {
            server.add_user(name, "supervisor", &areas)?;
        }
        server.add_user("cpl.officer", "officer", &areas)?;
        // Two doors, each with its unmeasured round, share the wrong-password
        // accounts' lockout counters.
        let wrong_accounts = 2 * (ROUNDS + 1) / WRONG_PER_ACCOUNT + 2;
        for i in 0..wrong_accounts {
            server.add_user(&format!("sgt.wrong{i}"), "supervisor", &areas)?;
        }
        server.user_command(&["disable", "--name", "sgt.disabled"])?;

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let connector = Connector::new(server.addr(), &server.ca())?;
        // Five wrong passwords lock the account, from an address no round
        // uses.
        rt.block_on(async {
            for _ in 0..5 {
                let (path, body) = Door::Enrolment.request("sgt.locked", "guess", 0);
                let local = Some(IpAddr::V4(Ipv4Addr::new(127, 0, 9, 9)));
                connector
                    .https_from(local, "POST", path, &[], Some(&body))
                    .await?;
            }
            anyhow::Ok(())
        })?;
        let listed = server.user_command(&["list"])?;
        ensure!(
            listed
                .lines()
                .any(|l| l.starts_with("sgt.locked\t") && l.ends_with("locked")),
            "sgt.locked did not lock: {listed}"
        );

        let mut doors = Vec::new();
        let mut summary_lines = Vec::new();
        // The wrong-password accounts are numbered across both doors.
        let mut wrong_round = 0;
        for door in [Door::Enrolment, Door::Desk] {
            let kinds = kinds(door);
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
            let mut refusal: Option<(u16, String)> = None;
            for round in 0..=ROUNDS {
                let local = Some(IpAddr::V4(Ipv4Addr::new(
                    127,
                    0,
                    door.block(),
                    round as u8 + 1,
                )));
                for step in 0..kinds.len() {
                    let which = (step + round) % kinds.len();
                    let kind = &kinds[which];
                    let user_round = if kind.name == "wrong password" {
                        wrong_round += 1;
                        wrong_round - 1
                    } else {
                        round
                    };
                    let (path, body) = door.request(&(kind.user)(user_round), kind.password, round);
                    let started = Instant::now();
                    let reply =
                        rt.block_on(connector.https_from(local, "POST", path, &[], Some(&body)))?;
                    let (status, answer) = (reply.status, reply.body);
                    let took = started.elapsed();
                    if kind.passes {
                        ensure!(
                            status == 200,
                            "{}: {} answered {status}: {answer}",
                            door.name(),
                            kind.name
                        );
                    } else {
                        match &refusal {
                            None => refusal = Some((status, answer.clone())),
                            Some(first) => ensure!(
                                (status, &answer) == (first.0, &first.1),
                                "{}: {} answered {status} {answer:?}, another refusal {first:?}",
                                door.name(),
                                kind.name
                            ),
                        }
                    }
                    if round > 0 {
                        times[which].push(ms(took));
                    }
                }
            }
            let unknown_p50 = summary(&times[0])[0];
            let mut per_kind = serde_json::Map::new();
            let mut line = format!("  {}:", door.name());
            for (kind, t) in kinds.iter().zip(&times) {
                let [p50, p90, _, max] = summary(t);
                let ratio = if unknown_p50 > 0.0 {
                    p50 / unknown_p50
                } else {
                    0.0
                };
                per_kind.insert(
                    kind.name.into(),
                    json!({
                        "p50_ms": round3(p50),
                        "p90_ms": round3(p90),
                        "max_ms": round3(max),
                        "p50_vs_unknown": round3(ratio),
                    }),
                );
                line.push_str(&format!(
                    "\n    {:<20} p50 {p50:7.1} ms  p90 {p90:7.1} ms  ({ratio:.2}x unknown)",
                    kind.name
                ));
            }
            summary_lines.push(line);
            doors.push((door.name(), Value::Object(per_kind)));
        }
        server.stop()?;
        let json = json!({
            "scenario": "login",
            "rounds": ROUNDS,
            "doors": doors
                .into_iter()
                .map(|(name, times)| (name.to_string(), times))
                .collect::<serde_json::Map<_, _>>(),
        });
        Ok(Outcome {
            name: "login",
            json,
            summary: format!(
                "login: {ROUNDS} rounds per door, every refusal answered alike\n{}",
                summary_lines.join("\n")
            ),
        })
    }
}
