//! How masters and workers connect to RabbitMQ and carry trace context in
//! message headers, so both make the same choices.

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

/// Message properties carrying the current span's trace context, so the
/// consumer's span continues the producer's trace.
pub fn traced(properties: lapin::BasicProperties) -> lapin::BasicProperties {
    match crate::telemetry::traceparent() {
        Some(traceparent) => {
            let mut headers = lapin::types::FieldTable::default();
            headers
                .insert(crate::telemetry::TRACEPARENT.into(), lapin::types::AMQPValue::LongString(traceparent.into()));
            properties.with_headers(headers)
        }
        None => properties,
    }
}

/// The trace context a message carries, if any.
pub fn traceparent_of(properties: &lapin::BasicProperties) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(crate::telemetry::TRACEPARENT)? {
        lapin::types::AMQPValue::LongString(value) => Some(value.to_string()),
        lapin::types::AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

/// The wait between attempts to reconnect: doubling from 200 ms to 10 s,
/// each with up to half again of jitter, so masters and workers that lost
/// the broker together do not all come back at the same instant.
#[derive(Debug)]
pub struct Backoff {
    delay: std::time::Duration,
}

impl Backoff {
    const FIRST: std::time::Duration = std::time::Duration::from_millis(200);
    const LAST: std::time::Duration = std::time::Duration::from_secs(10);

    pub fn new() -> Backoff {
        Backoff { delay: Self::FIRST }
    }

    /// After a connection that worked: the next wait is short again.
    pub fn reset(&mut self) {
        self.delay = Self::FIRST;
    }

    /// How long to wait before the next attempt.
    pub fn next_wait(&mut self) -> std::time::Duration {
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
        let wait = self.delay + self.delay.mul_f64(f64::from(nanos % 1000) / 2000.0);
        self.delay = (self.delay * 2).min(Self::LAST);
        wait
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
