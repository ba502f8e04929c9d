//! Structured logs (JSON lines in production, readable lines on a terminal; `RUST_LOG` filters) and,
//! when a collector is configured, OpenTelemetry traces over OTLP/HTTP: a span per request and upload,
//! with child spans for the Box session, each part and the commit, joined to the caller's W3C
//! `traceparent` (`routes/middleware.rs` opens the request's span); log lines then carry the `trace_id`.
use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// What `init` set up; `shutdown` sends the spans not yet exported.
#[derive(Default)]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    pub async fn shutdown(self) {
        if let Some(provider) = self.tracer {
            // Blocks until the last batch is sent, which needs the runtime's other threads.
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Installs the global subscriber (once per process; later calls are no-ops, which tests rely on).
/// Traces go to `otlp_endpoint` (a base URL), else to the standard `OTEL_EXPORTER_OTLP_*` variables
/// when set; otherwise there are none. Must run inside the tokio runtime (the exporter sends on it).
pub fn init(format: &str, otlp_endpoint: Option<&str>) -> Result<Telemetry, String> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let pretty = match format {
        "pretty" => true,
        "json" => false,
        _ => std::io::stdout().is_terminal(),
    };
    let logs = match pretty {
        true => fmt::layer().with_target(false).boxed(),
        false => fmt::layer()
            .with_target(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
    };
    let tracer = tracer_provider(otlp_endpoint)?;
    let traces = tracer.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("box-upload-gateway"))
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(logs.with_filter(filter()))
        .with(traces)
        .try_init();
    Ok(Telemetry { tracer })
}

fn tracer_provider(otlp_endpoint: Option<&str>) -> Result<Option<SdkTracerProvider>, String> {
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|key| std::env::var(key).is_ok_and(|v| !v.is_empty()));
    let endpoint = otlp_endpoint.filter(|e| !e.is_empty());
    if endpoint.is_none() && !from_env {
        return Ok(None);
    }
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(OtlpHttp {
            http: crate::http_client::otlp_client(),
            rt: tokio::runtime::Handle::current(),
        });
    if let Some(base) = endpoint {
        exporter = exporter.with_endpoint(format!("{}/v1/traces", base.trim_end_matches('/')));
    }
    let exporter = exporter
        .build()
        .map_err(|e| format!("otlp_endpoint: cannot export traces: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name("box-upload-gateway")
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build(),
    ))
}

/// The OTLP exporter's HTTP client: our reqwest, run on the tokio runtime. The SDK exports from a
/// thread of its own (`futures_executor::block_on`), where reqwest cannot run, so each request is
/// spawned onto the runtime and its answer awaited through a channel.
#[derive(Debug)]
struct OtlpHttp {
    http: reqwest::Client,
    rt: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpHttp {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        let http = self.http.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.rt.spawn(async move {
            let answer = async {
                let (parts, body) = request.into_parts();
                let response = http
                    .request(parts.method, parts.uri.to_string())
                    .headers(parts.headers)
                    .body(body)
                    .send()
                    .await?;
                let mut answer = opentelemetry_http::Response::builder().status(response.status());
                if let Some(headers) = answer.headers_mut() {
                    *headers = response.headers().clone();
                }
                let body = response.bytes().await?;
                Ok::<_, opentelemetry_http::HttpError>(answer.body(body)?)
            };
            let _ = tx.send(answer.await);
        });
        rx.await?
    }
}
