//! Session settings (GUCs) under transaction pooling.
//!
//! A client's `SET`s and startup parameters are recorded as statements to
//! replay. Every backend connection records the same for itself, so that when
//! a client lands on a connection, the difference between the two is all that
//! needs to run — usually nothing.

use std::collections::BTreeMap;

use postgres_protocol::escape::{escape_identifier, escape_literal};

/// One setting: how to establish it and how to undo it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub set_sql: String,
    pub reset_sql: String,
}

/// A change a completed statement made to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set {
        name: String,
        setting: Setting,
    },
    Reset {
        name: String,
    },
    /// `RESET ALL`: back to the startup parameters.
    ResetAll,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings(BTreeMap<String, Setting>);

impl Settings {
    /// Settings given as startup parameters (`application_name`, `DateStyle`, ...).
    pub fn from_startup<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        Settings(
            params.into_iter().map(|(name, value)| (name.to_ascii_lowercase(), Setting::assign(name, value))).collect(),
        )
    }

    pub fn apply(&mut self, change: &Change, startup: &Settings) {
        match change {
            Change::Set { name, setting } => {
                self.0.insert(name.clone(), setting.clone());
            }
            Change::Reset { name } => match startup.0.get(name) {
                // RESET returns a startup parameter to its startup value.
                Some(s) => {
                    self.0.insert(name.clone(), s.clone());
                }
                None => {
                    self.0.remove(name);
                }
            },
            Change::ResetAll => *self = startup.clone(),
        }
    }

    /// SQL that turns a connection whose settings are `from` into one whose
    /// settings are `self`; `None` when they already match.
    pub fn diff_sql(&self, from: &Settings) -> Option<String> {
        let mut sql = Vec::new();
        for (name, old) in &from.0 {
            if !self.0.contains_key(name) {
                sql.push(old.reset_sql.as_str());
            }
        }
        for (name, new) in &self.0 {
            if from.0.get(name) != Some(new) {
                sql.push(new.set_sql.as_str());
            }
        }
        (!sql.is_empty()).then(|| sql.join("; "))
    }

    pub fn get(&self, name: &str) -> Option<&Setting> {
        self.0.get(name)
    }
}

impl Setting {
    /// `SET name TO 'value'` for a name/value pair given as text.
    pub fn assign(name: &str, value: &str) -> Setting {
        let name = escape_identifier(&name.to_ascii_lowercase());
        Setting { set_sql: format!("SET {name} TO {}", escape_literal(value)), reset_sql: format!("RESET {name}") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_sets_what_differs_and_resets_what_is_extra() {
        let startup = Settings::from_startup([("application_name", "psql")]);
        let mut client = startup.clone();
        client.apply(
            &Change::Set { name: "search_path".into(), setting: Setting::assign("search_path", "app") },
            &startup,
        );
        let conn = Settings::from_startup([("application_name", "other"), ("timezone", "UTC")]);
        let sql = client.diff_sql(&conn).unwrap();
        assert_eq!(sql, "RESET \"timezone\"; SET \"application_name\" TO 'psql'; SET \"search_path\" TO 'app'");
        assert_eq!(client.diff_sql(&client), None);
    }

    #[test]
    fn reset_returns_to_startup_value() {
        let startup = Settings::from_startup([("DateStyle", "ISO")]);
        let mut s = startup.clone();
        s.apply(&Change::Set { name: "datestyle".into(), setting: Setting::assign("datestyle", "German") }, &startup);
        s.apply(&Change::Reset { name: "datestyle".into() }, &startup);
        assert_eq!(s, startup);
        s.apply(&Change::ResetAll, &startup);
        assert_eq!(s, startup);
    }
}
