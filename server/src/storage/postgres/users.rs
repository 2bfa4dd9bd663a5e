//! [`UserStore`] in PostgreSQL: table `users` (name → the user as JSON).

use std::sync::Arc;

use crate::storage::postgres::{notify, Pg};
use crate::storage::store::StoreError;
use crate::storage::users::{User, UserStore};

/// Users in PostgreSQL.
pub struct PgUserStore {
    pg: Arc<Pg>,
}

impl PgUserStore {
    /// The users of the database `pg`.
    pub fn new(pg: Arc<Pg>) -> PgUserStore {
        PgUserStore { pg }
    }
}

/// A user that does not decode, named (what is wrong with it could quote
/// its password hash).
fn corrupt(name: &str) -> StoreError {
    StoreError::Corrupt {
        tree: "users",
        reason: name.to_string(),
    }
}

fn decode(name: &str, body: &str) -> Result<User, StoreError> {
    serde_json::from_str(body).map_err(|_| corrupt(name))
}

impl UserStore for PgUserStore {
    fn get(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_string();
        self.pg.run(move |c| async move {
            let row = c
                .query_opt(
                    &c.prepare_cached("SELECT body FROM users WHERE name = $1")
                        .await?,
                    &[&name],
                )
                .await?;
            row.map(|r| decode(&name, r.get(0))).transpose()
        })
    }

    fn put(&self, user: &User, durably: bool) -> Result<(), StoreError> {
        let body = serde_json::to_string(user).map_err(|_| corrupt(&user.name))?;
        let name = user.name.clone();
        let said = notify::user(self.pg.node());
        self.pg.run(move |mut c| async move {
            let tx = c.transaction().await?;
            if !durably {
                tx.batch_execute("SET LOCAL synchronous_commit TO off")
                    .await?;
            }
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO users (name, body) VALUES ($1, $2) \
                 ON CONFLICT (name) DO UPDATE SET body = EXCLUDED.body",
                )
                .await?,
                &[&name, &body],
            )
            .await?;
            notify::say(&tx, &said).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn list(&self) -> Result<Vec<User>, StoreError> {
        self.pg.run(|c| async move {
            c.query(
                &c.prepare_cached("SELECT name, body FROM users ORDER BY name")
                    .await?,
                &[],
            )
            .await?
            .iter()
            .map(|r| decode(r.get(0), r.get(1)))
            .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::users::{LoginError, UserRegistry};
    use crate::storage::postgres::{testing, PgThrottles};
    use baraza_records::access::Role;

    /// One node's registry over the database at `url`.
    fn node(url: &str) -> UserRegistry {
        let pg = Pg::connect(url).unwrap();
        UserRegistry::new(
            Arc::new(PgUserStore::new(pg.clone())),
            Arc::new(PgThrottles::new(pg)),
        )
    }

    #[test]
    fn five_bad_logins_spread_over_two_nodes_lock_the_account() {
        let url = testing::database_url();
        let (a, b) = (node(&url), node(&url));
        let areas = vec!["kibera".to_string()];
        a.add("otieno", Role::Officer, &areas, "long enough passphrase 42")
            .unwrap();
        let seen = b.get("otieno").unwrap().unwrap();
        assert_eq!((seen.role, seen.areas), (Role::Officer, areas));
        let now = crate::clock::unix_now();
        for i in 0..4 {
            let node = if i % 2 == 0 { &a } else { &b };
            assert!(matches!(
                node.login("otieno", "wrong", now + i),
                Err(LoginError::WrongPassword)
            ));
        }
        assert!(matches!(
            b.login("otieno", "wrong", now + 4),
            Err(LoginError::WrongPasswordNowLocked)
        ));
        // Locked on both, even with the right password.
        for node in [&a, &b] {
            assert!(matches!(
                node.login("otieno", "long enough passphrase 42", now + 5),
                Err(LoginError::Locked)
            ));
        }
        a.release("otieno").unwrap();
        assert!(b
            .login("otieno", "long enough passphrase 42", now + 6)
            .is_ok());
        let names: Vec<String> = a.list().unwrap().into_iter().map(|u| u.name).collect();
        assert_eq!(names, ["otieno"]);
    }

    #[test]
    fn a_user_that_does_not_decode_is_corrupt_and_named() {
        let pg = testing::database();
        pg.run(|c| async move {
            c.execute("INSERT INTO users VALUES ('amina', '{not json')", &[])
                .await?;
            Ok(())
        })
        .unwrap();
        let users = PgUserStore::new(pg);
        match users.get("amina") {
            Err(StoreError::Corrupt { reason, .. }) => assert_eq!(reason, "amina"),
            other => panic!("{other:?}"),
        }
    }
}
