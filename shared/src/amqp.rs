//! How masters and workers connect to RabbitMQ, so both make the same
//! choices.

use lapin::uri::AMQPUri;

/// Largest AMQP frame asked for, unless the URL sets `frame_max`. The client
/// library keeps 32 frames of buffer each way per connection, zero-filled:
/// RabbitMQ's default of 128 KiB would cost 8 MiB per connection, while
/// buildmaster's messages are a few KiB (larger ones span frames).
pub const FRAME_MAX: u32 = 16 * 1024;

/// Parses a RabbitMQ URL (`amqp://user:password@host:5672/%2f`) and applies
/// buildmaster's connection defaults where the URL sets none.
pub fn uri(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    uri.query.frame_max.get_or_insert(FRAME_MAX);
    Ok(uri)
}
