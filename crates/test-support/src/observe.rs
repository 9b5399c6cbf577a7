//! Reading back what the processes emitted: an exported span's attributes, and waiting (bounded)
//! for something to appear in a log, a receiver or an answer. It starts nothing and writes nothing.

use std::time::Duration;

use fake_opentelemetry_collector::ExportedSpan;

/// A string (or int) attribute of an exported span, as the receiver prints it.
pub fn span_attr(span: &ExportedSpan, key: &str) -> Option<String> {
    let debug = span.attributes.get(key)?;
    for (open, close) in [("StringValue(\"", "\")"), ("IntValue(", ")")] {
        if let Some(start) = debug.find(open) {
            let rest = &debug[start + open.len()..];
            return rest.find(close).map(|end| rest[..end].to_owned());
        }
    }
    None
}

/// Ask `probe` every 50 ms until it gives a value, for at most 15 s; on timeout, fail naming `what`.
pub async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
