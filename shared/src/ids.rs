//! Typed ids and names, so a build's id cannot be passed where a request's
//! is expected, and a builder's name cannot be mistaken for a worker's.
//!
//! Each is its bare value on the wire (`#[serde(transparent)]`) and in
//! Postgres (`#[sqlx(transparent)]`): typing them changes no message and
//! no column.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id!(
    /// A builder's row in Postgres; kept when the builder leaves the
    /// configuration, so its history keeps its id.
    BuilderId(i32)
);
id!(BuildId(i64));
id!(BuildRequestId(i64));
id!(BuildsetId(i64));
id!(WorkerId(i32));
id!(StepId(i64));
id!(LogId(i64));
id!(ChangeId(i64));
id!(MasterId(i32));

macro_rules! name {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(name: impl Into<String>) -> Self {
                Self(name.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(name: &str) -> Self {
                Self(name.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(name: String) -> Self {
                Self(name)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        /// A name is read as the text it is wherever text is expected
        /// (queue names, SQL parameters, log fields).
        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

name!(
    /// A builder's name as master.yaml gives it (after matrix expansion):
    /// what people see, and part of its queue's name.
    BuilderName
);
name!(
    /// A worker's name: its login, and part of its queues' and keys' names.
    WorkerName
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_are_their_bare_values_in_json() {
        assert_eq!(serde_json::to_string(&BuildId(7)).unwrap(), "7");
        assert_eq!(serde_json::from_str::<BuilderId>("3").unwrap(), BuilderId(3));
        assert_eq!(serde_json::to_string(&WorkerName::new("w1")).unwrap(), "\"w1\"");
        assert_eq!(serde_json::from_str::<BuilderName>("\"x 1\"").unwrap(), "x 1");
    }
}
