//! Load at a fixed rate (the soak, `soak`, is built on it), and the figures it reports: used by the
//! benchmarks (`benches/load.rs`) and the soak.
//!
//! The load is an open loop: request `i` is due at `start + i / rate`, whatever happened to the ones
//! before it, and its latency is counted from that due time. A closed loop (each worker waits for its
//! answer before sending again) sends less when the server stalls and so hides the stall
//! (coordinated omission); an open loop does not. Every run is bounded by its request count and a
//! per-request timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One request's latency from its due time, and whether it went as it should.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Due time, from the start of the run.
    pub due: Duration,
    /// From the due time to the answer.
    pub latency: Duration,
    /// How late the request left (the generator's own lag, included in `latency`).
    pub lag: Duration,
    pub ok: bool,
}

/// Send `count` requests at `rate` per second, each made by `request(i)` (true: answered as it
/// should), and return every sample in due order. The schedule runs on a thread of its own, which
/// sleeps to each due time (so the runtime's millisecond timer does not bunch requests) and spawns
/// the request on `runtime`.
pub async fn open_loop<F, Fut>(rate: f64, count: u64, request: F) -> Vec<Sample>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    assert!(rate > 0.0 && count > 0);
    let runtime = tokio::runtime::Handle::current();
    let request = Arc::new(request);
    let period = Duration::from_secs_f64(1.0 / rate);
    let schedule = std::thread::spawn(move || {
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(count as usize);
        for i in 0..count {
            let due = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let request = request.clone();
            tasks.push(runtime.spawn(async move {
                let lag = Instant::now().saturating_duration_since(due);
                let ok = request(i).await;
                Sample {
                    due: due - start,
                    latency: due.elapsed(),
                    lag,
                    ok,
                }
            }));
        }
        tasks
    });
    let tasks = tokio::task::spawn_blocking(move || schedule.join().expect("schedule thread"))
        .await
        .expect("join schedule");
    let mut samples = Vec::with_capacity(tasks.len());
    for t in tasks {
        samples.push(t.await.expect("request task"));
    }
    samples
}

/// Like `open_loop`, on `workers` fixed workers (each with its own connection, say) that take the
/// due requests in order, as wrk2 does: when every worker is busy a due request waits for one, and
/// the wait counts in its latency. `request(worker, i)`. Samples come back in due order.
pub async fn open_loop_on<F, Fut>(rate: f64, count: u64, workers: usize, request: F) -> Vec<Sample>
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    assert!(rate > 0.0 && count > 0 && workers > 0);
    let (due_tx, due_rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>();
    let due_rx = Arc::new(tokio::sync::Mutex::new(due_rx));
    let request = Arc::new(request);
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (due_rx, request) = (due_rx.clone(), request.clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                loop {
                    let next = due_rx.lock().await.recv().await;
                    let Some((i, due)) = next else { break samples };
                    let lag = Instant::now().saturating_duration_since(due);
                    let ok = request(w, i).await;
                    samples.push((
                        i,
                        Sample {
                            due: due - start,
                            latency: due.elapsed(),
                            lag,
                            ok,
                        },
                    ));
                }
            })
        })
        .collect();
    let period = Duration::from_secs_f64(1.0 / rate);
    let schedule = std::thread::spawn(move || {
        for i in 0..count {
            let due = start + period.mul_f64(i as f64);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if due_tx.send((i, due)).is_err() {
                break;
            }
        }
    });
    let mut all = Vec::with_capacity(count as usize);
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    tokio::task::spawn_blocking(move || schedule.join().expect("schedule thread"))
        .await
        .expect("join schedule");
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, s)| s).collect()
}

/// Latency percentiles of the samples due at or after `from`.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub sent: usize,
    pub failed: usize,
    /// Answers per second over the measured window.
    pub rate: f64,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    /// The generator's own p99 lag in sending (part of every latency).
    pub lag_p99: Duration,
}

pub fn summarize(samples: &[Sample], from: Duration) -> Summary {
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.due >= from).collect();
    assert!(!measured.is_empty(), "no sample in the measured window");
    let mut latencies: Vec<Duration> = measured.iter().map(|s| s.latency).collect();
    let mut lags: Vec<Duration> = measured.iter().map(|s| s.lag).collect();
    latencies.sort();
    lags.sort();
    let first = measured.first().map_or(Duration::ZERO, |s| s.due);
    let last_done = measured.iter().map(|s| s.due + s.latency).max().unwrap_or_default();
    let span = last_done.saturating_sub(first).as_secs_f64().max(1e-9);
    Summary {
        sent: measured.len(),
        failed: measured.iter().filter(|s| !s.ok).count(),
        rate: measured.len() as f64 / span,
        p50: percentile(&latencies, 50.0),
        p99: percentile(&latencies, 99.0),
        max: latencies.last().copied().unwrap_or_default(),
        lag_p99: percentile(&lags, 99.0),
    }
}

/// The `p`th percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The 1-minute load average.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sum of every sample of `name` in a Prometheus/OpenMetrics text whose labels contain all of
/// `labels` (e.g. `result="miss"`).
pub(crate) fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want))).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub fn us(d: Duration) -> String {
    if d >= Duration::from_millis(10) {
        format!("{:.1} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} us", d.as_secs_f64() * 1e6)
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
