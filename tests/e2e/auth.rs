//! Client authentication methods and their errors.

use crate::harness::{Fleet, Sidecar, sqlstate};

#[tokio::test]
async fn every_auth_method_logs_in() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    for (user, password) in [("app", "secret"), ("md5user", "md5secret"), ("plain", "plainsecret"), ("local", "")] {
        let c = sc.connect_as(user, password).await.unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(c.query_one("SELECT 1", &[]).await.unwrap().get::<_, i32>(0), 1, "{user}");
    }
}

#[tokio::test]
async fn wrong_password_and_unknown_user_are_clear_errors() {
    let fleet = Fleet::shared();
    let sc = Sidecar::start(&fleet.config(2));
    for (user, password) in [("app", "wrong"), ("md5user", "wrong"), ("plain", "wrong")] {
        let err = sc.connect_as(user, password).await.err().unwrap_or_else(|| panic!("{user} got in"));
        assert_eq!(sqlstate(&err), "28P01", "{user}: {err}");
        let message = err.as_db_error().map(|e| e.message().to_string()).unwrap_or_default();
        assert_eq!(message, format!("password authentication failed for user \"{user}\""));
    }
    // An unknown user gets the answer a wrong password gets (no user enumeration).
    let err = sc.connect_as("nobody", "x").await.err().unwrap();
    assert_eq!(sqlstate(&err), "28P01");
    assert_eq!(err.as_db_error().unwrap().message(), "password authentication failed for user \"nobody\"");
    // The sidecar carries on.
    sc.connect().await.query_one("SELECT 1", &[]).await.unwrap();
}
