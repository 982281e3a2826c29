//! Logging and tracing, set up once and the same way for both binaries, and
//! the one place trace context crosses a process boundary.
//!
//! `RUST_LOG` filters (default `info`); `BUILDMASTER_LOG_FORMAT=json` switches
//! to one JSON object per line for log collectors. With
//! `telemetry.otlp_endpoint` set, spans also go to an OpenTelemetry
//! collector over OTLP/HTTP, from a background thread, and are flushed when
//! the returned [`Telemetry`] is shut down.
//!
//! A build's trace crosses HTTP, Postgres, RabbitMQ and the worker as W3C
//! `traceparent` strings: [`traceparent`] writes the current span's context,
//! [`continue_from`] makes a span its child.

use std::collections::HashMap;
use std::io::IsTerminal;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{OtlpProtocol, TelemetrySettings};

/// The W3C trace context header, and its name in AMQP headers and rows.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot set up the OTLP exporter for {endpoint} (telemetry.otlp_endpoint): {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Keeps the exporter alive; [`Telemetry::shutdown`] sends what is left.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes the spans not yet exported and stops the exporter.
    pub fn shutdown(self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("telemetry: spans could not all be exported at shutdown: {error}");
        }
    }
}

/// Installs the global subscriber for `service` (`buildmaster-master`,
/// `buildmaster-worker`, unless `settings.service_name` says otherwise).
/// Call once, before anything logs.
pub fn init(service: &str, settings: &TelemetrySettings) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("BUILDMASTER_LOG_FORMAT").is_ok_and(|v| v == "json");
    let colours = std::io::stderr().is_terminal();
    let human = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colours));
    let machine = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr));
    let provider = match &settings.otlp_endpoint {
        Some(endpoint) => Some(provider(service, endpoint, settings)?),
        None => None,
    };
    let otel =
        provider.as_ref().map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("buildmaster")));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry().with(filter).with(human).with(machine).with(otel).init();
    Ok(Telemetry { provider })
}

fn provider(service: &str, endpoint: &str, settings: &TelemetrySettings) -> Result<SdkTracerProvider, TelemetryError> {
    let protocol = match settings.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let traces = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(&traces)
        .with_protocol(protocol)
        .build()
        .map_err(|error| TelemetryError::Exporter { endpoint: traces.clone(), reason: error.to_string() })?;
    let name = settings.service_name.clone().unwrap_or_else(|| service.to_owned());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        // Where a trace starts decides; its other parts follow the parent.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sampling_ratio))))
        .with_resource(
            Resource::builder()
                .with_service_name(name)
                .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build())
}

/// The current span's context as a W3C `traceparent`, to carry it to
/// another process (an AMQP header, a column); `None` when not traced.
pub fn traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the span a `traceparent` names (a no-op without
/// one, or with one that does not parse).
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let carrier = HashMap::from([(TRACEPARENT.to_owned(), traceparent.to_owned())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}
