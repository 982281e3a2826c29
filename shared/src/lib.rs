//! What masters and workers must agree on, in one crate so they agree by
//! construction: configuration (both YAML files), the domain model, the wire
//! messages, the names of queues and keys, the schema, and telemetry setup.
//! Nothing here opens a connection.

pub mod amqp;
pub mod config;
pub mod ids;
pub mod model;
pub mod names;
pub mod telemetry;
pub mod wire;

/// The Postgres schema, from `migrations/`, applied by `buildmaster upgrade-master`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");
