//! Logs go to stderr, as text for people or JSON for log pipelines (`--log-format json`).

use crate::config::Format;

pub fn init(format: Format) {
    let builder = tracing_subscriber::fmt().with_writer(std::io::stderr).with_target(false);
    match format {
        Format::Text => builder.with_ansi(false).init(),
        Format::Json => builder.json().flatten_event(true).init(),
    }
}
