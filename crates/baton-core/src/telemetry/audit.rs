//! The audit log: one JSON line per delegation decision, to stdout or to a file rotated by size. A
//! request only queues a record (bounded; when full the record is dropped and counted, a request
//! never waits on the disk); a thread of its own formats and writes. A record names people and
//! workloads and never holds a token: tokens appear in it as nothing at all, not even fingerprints.
//! The schema is documented in docs/observability.md ("Audit log").

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::TraceId;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

use super::settings::{Audit as AuditConfig, AuditSink, SubjectMode};
use crate::cache::{CacheStatus, Delegated};
use crate::decision::Destination;
use crate::secret::fingerprint;
use baton_decide::reason::Reason;

/// What one decision leaves in the audit log; formatted on the writer's thread.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) time: SystemTime,
    pub(crate) api: &'static str,
    pub(crate) decision: &'static str,
    pub(crate) reason: Option<Reason>,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) source: Option<String>,
    pub(crate) destination: Option<Arc<Destination>>,
    pub(crate) delegated: Option<Arc<Delegated>>,
    pub(crate) cache: Option<CacheStatus>,
    /// The deferred job a Defer or Redeem decision was for.
    pub(crate) job: Option<Box<str>>,
}

/// What one revocation signal leaves in the audit log (`api: revocation`).
#[derive(Debug)]
pub(crate) struct Revoked {
    pub(crate) time: SystemTime,
    /// Where the signal came from: `operator`, `backchannel_logout`, `invalid_token` (a destination's 401), ...
    pub(crate) event: &'static str,
    pub(crate) selector: crate::revocation::Selector,
    /// `ok`, or `full`.
    pub(crate) outcome: &'static str,
    pub(crate) purged: usize,
}

#[derive(Serialize)]
struct RevokedLine<'a> {
    time: String,
    api: &'static str,
    event: &'a str,
    kind: &'a str,
    outcome: &'a str,
    subject: Option<Subject<'a>>,
    /// A fingerprint of the session id, never the id.
    session: Option<String>,
    purged: usize,
    /// A destination's purges (`destination`, `served`): its configured name.
    #[serde(skip_serializing_if = "Option::is_none")]
    destination: Option<&'a str>,
    /// The deferred job revoked (`kind: job`); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
}

impl Revoked {
    fn line(&self, subject_mode: SubjectMode) -> String {
        use crate::revocation::Selector;
        let (subject, session) = match &self.selector {
            Selector::Subject { issuer, sub } => (
                Some(Subject {
                    iss: issuer.as_deref(),
                    sub: Some(match subject_mode {
                        SubjectMode::Plain => sub.as_str().into(),
                        SubjectMode::Hashed => fingerprint(sub).into(),
                    }),
                }),
                None,
            ),
            Selector::Session { sid } => (None, Some(fingerprint(sid))),
            // An e-mail address is a subject as `audit.subject` says (plain, or a fingerprint).
            Selector::Email { email } => (
                Some(Subject {
                    iss: None,
                    sub: Some(match subject_mode {
                        SubjectMode::Plain => email.as_str().into(),
                        SubjectMode::Hashed => fingerprint(email).into(),
                    }),
                }),
                None,
            ),
            Selector::All | Selector::Destination { .. } | Selector::Served { .. } | Selector::Job { .. } => {
                (None, None)
            }
        };
        let destination = match &self.selector {
            Selector::Destination { name: d } | Selector::Served { destination: d } => Some(d.as_str()),
            _ => None,
        };
        let job = match &self.selector {
            Selector::Job { job } => Some(job.as_str()),
            _ => None,
        };
        let line = RevokedLine {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            api: "revocation",
            event: self.event,
            kind: self.selector.kind(),
            outcome: self.outcome,
            subject,
            session,
            purged: self.purged,
            destination,
            job,
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// What the writer is sent.
#[derive(Debug)]
pub(crate) enum Record {
    Decision(Entry),
    Revocation(Revoked),
}

impl Record {
    fn line(&self, subject_mode: SubjectMode) -> String {
        match self {
            Self::Decision(entry) => entry.line(subject_mode),
            Self::Revocation(revoked) => revoked.line(subject_mode),
        }
    }
}

/// The line's shape. Field order is the documented one.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    api: &'a str,
    decision: &'a str,
    reason: Option<&'a str>,
    trace_id: Option<String>,
    source: Option<&'a str>,
    subject: Option<Subject<'a>>,
    actors: &'a [Box<str>],
    delegation_depth: usize,
    destination: Option<&'a str>,
    audience: Option<&'a str>,
    resource: Option<&'a str>,
    scopes_requested: Vec<&'a str>,
    scopes_granted: Option<Vec<&'a str>>,
    jti: Option<&'a str>,
    exp: Option<i64>,
    cache: Option<&'a str>,
    /// The `actors` were read from an issued token whose signature was verified (`verify_issued`).
    chain_verified: bool,
    /// The deferred job (Defer, Redeem); absent on every other decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<&'a str>,
    /// The destination's token service is an identity chaining one: both steps' services.
    #[serde(skip_serializing_if = "Option::is_none")]
    identity_chaining: Option<ChainingSteps<'a>>,
}

/// Identity chaining's two steps: the token service that issued the grant, and the one it was
/// presented to.
#[derive(Serialize)]
struct ChainingSteps<'a> {
    grant_from: &'a str,
    assertion_at: &'a str,
}

#[derive(Serialize)]
struct Subject<'a> {
    iss: Option<&'a str>,
    sub: Option<std::borrow::Cow<'a, str>>,
}

fn scopes(scope: Option<&str>) -> Vec<&str> {
    scope
        .map(|s| s.split(' ').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default()
}

impl Entry {
    fn line(&self, subject_mode: SubjectMode) -> String {
        let claims = self.delegated.as_ref().map(|d| d.claims());
        let target = self.destination.as_ref().map(|r| &r.target);
        let subject = claims
            .filter(|c| c.subject_iss.is_some() || c.subject_sub.is_some())
            .map(|c| Subject {
                iss: c.subject_iss,
                sub: c.subject_sub.map(|sub| match subject_mode {
                    SubjectMode::Plain => sub.into(),
                    SubjectMode::Hashed => fingerprint(sub).into(),
                }),
            });
        let actors = self.delegated.as_ref().map_or(&[][..], |d| d.actors());
        let line = Line {
            time: humantime::format_rfc3339_millis(self.time).to_string(),
            api: self.api,
            decision: self.decision,
            reason: self.reason.map(Reason::as_str),
            trace_id: self.trace_id.map(|t| t.to_string()),
            source: self.source.as_deref(),
            subject,
            actors,
            delegation_depth: actors.len(),
            destination: self.destination.as_ref().map(|r| &*r.name),
            audience: target.and_then(|t| t.audience.as_deref()),
            resource: target.and_then(|t| t.resource.as_deref()),
            scopes_requested: scopes(
                claims
                    .and_then(|c| c.requested_scope)
                    .or(target.and_then(|t| t.scope.as_deref())),
            ),
            scopes_granted: self.delegated.as_ref().map(|d| scopes(d.scope().or(d.claims().scope))),
            jti: claims.and_then(|c| c.jti),
            exp: claims.and_then(|c| c.exp),
            cache: self.cache.map(CacheStatus::as_str),
            chain_verified: self.delegated.as_ref().is_some_and(|d| d.chain_verified()),
            job: self.job.as_deref(),
            identity_chaining: self.destination.as_ref().and_then(|r| {
                r.token_service.chaining().map(|c| ChainingSteps {
                    grant_from: c.home_name(),
                    assertion_at: r.token_service.name(),
                })
            }),
        };
        let mut text = serde_json::to_string(&line).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// The queue to the writer thread.
#[derive(Debug)]
pub(crate) struct Audit {
    tx: std::sync::Mutex<Option<SyncSender<Record>>>,
    done: std::sync::Mutex<Option<Receiver<()>>>,
    dropped: Counter,
}

impl Audit {
    /// Open the sink and start the writer; `None` when the audit log is off.
    pub(crate) fn start(config: &AuditConfig, dropped: Counter) -> Result<Option<Self>, String> {
        let mut sink = match &config.sink {
            AuditSink::Off => return Ok(None),
            AuditSink::Stdout => Sink::Stdout(BufWriter::new(io::stdout())),
            AuditSink::File {
                path,
                max_bytes,
                max_files,
            } => Sink::File(
                Rotating::open(path.clone(), *max_bytes, *max_files)
                    .map_err(|e| format!("audit.path: cannot open {}: {e}", path.display()))?,
            ),
        };
        let (tx, rx) = std::sync::mpsc::sync_channel::<Record>(config.buffer);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let subject = config.subject;
        let errors = dropped.clone();
        std::thread::Builder::new()
            .name("baton-audit".into())
            .spawn(move || {
                let mut failing = false;
                let mut write = |sink: &mut Sink, entry: Record| match sink.write(entry.line(subject).as_bytes()) {
                    Ok(()) => failing = false,
                    Err(e) => {
                        errors.inc();
                        if !failing {
                            tracing::error!(error = %e, "cannot write the audit log; records are dropped until it recovers");
                        }
                        failing = true;
                    }
                };
                while let Ok(entry) = rx.recv() {
                    write(&mut sink, entry);
                    // Flush once the queue is empty: a burst is one write, a quiet period is on disk.
                    while let Ok(entry) = rx.try_recv() {
                        write(&mut sink, entry);
                    }
                    if let Err(e) = sink.flush() {
                        tracing::error!(error = %e, "cannot flush the audit log");
                    }
                }
                let _ = sink.flush();
                let _ = done_tx.send(());
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok(Some(Self {
            tx: std::sync::Mutex::new(Some(tx)),
            done: std::sync::Mutex::new(Some(done_rx)),
            dropped,
        }))
    }

    /// Queue a decision's record; never waits.
    pub(crate) fn record(&self, entry: Entry) {
        self.send(Record::Decision(entry));
    }

    /// Queue a revocation's record; never waits.
    pub(crate) fn record_revocation(&self, revoked: Revoked) {
        self.send(Record::Revocation(revoked));
    }

    fn send(&self, entry: Record) {
        // The lock is held for a non-blocking send only.
        let sent = match self.tx.lock() {
            Ok(tx) => match tx.as_ref() {
                Some(tx) => match tx.try_send(entry) {
                    Ok(()) => true,
                    Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
                },
                None => false,
            },
            Err(_) => false,
        };
        if !sent {
            self.dropped.inc();
        }
    }

    /// Write what is queued and stop, waiting at most `grace`. Blocking.
    pub(crate) fn shutdown(&self, grace: Duration) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        let done = self.done.lock().ok().and_then(|mut d| d.take());
        if let Some(done) = done
            && let Err(RecvTimeoutError::Timeout) = done.recv_timeout(grace)
        {
            tracing::warn!(?grace, "the audit writer did not finish in time");
        }
    }
}

// === Sinks ===

enum Sink {
    Stdout(BufWriter<io::Stdout>),
    File(Rotating),
}

impl Sink {
    fn write(&mut self, line: &[u8]) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.write_all(line),
            Sink::File(file) => file.write(line),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Stdout(out) => out.flush(),
            Sink::File(file) => file.file.flush(),
        }
    }
}

/// A file that moves aside when the next line would take it past `max_bytes`: `audit.log` becomes
/// `audit.log.1`, `.1` becomes `.2`, and the oldest beyond `max_files` is overwritten.
pub(crate) struct Rotating {
    path: PathBuf,
    max_bytes: u64,
    max_files: u32,
    file: BufWriter<File>,
    size: u64,
}

impl Rotating {
    pub(crate) fn open(path: PathBuf, max_bytes: u64, max_files: u32) -> io::Result<Self> {
        let file = open_append(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            max_bytes,
            max_files,
            file: BufWriter::new(file),
            size,
        })
    }

    pub(crate) fn write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| {
            let mut name = self.path.as_os_str().to_owned();
            name.push(format!(".{n}"));
            PathBuf::from(name)
        };
        for n in (1..self.max_files).rev() {
            match std::fs::rename(numbered(n), numbered(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, numbered(1))?;
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

/// Audit lines name people: readable by the owner and the group only.
fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    OpenOptions::new().create(true).append(true).mode(0o640).open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "baton-audit-test-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn files_rotate_by_size_and_keep_max_files() {
        let dir = scratch("rotate");
        let path = dir.join("audit.log");
        let mut file = Rotating::open(path.clone(), 100, 2).expect("open");
        let line = [b'x'; 39];
        for i in 0..7u8 {
            let mut l = line.to_vec();
            l[0] = b'0' + i;
            l.push(b'\n');
            file.write(&l).expect("write");
        }
        file.file.flush().expect("flush");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        // Two 40-byte lines fit in 100 bytes; the third rotates. Lines 0-1, 2-3, 4-5, 6.
        assert_eq!(read(&path).lines().map(|l| &l[..1]).collect::<Vec<_>>(), ["6"]);
        assert_eq!(read(&dir.join("audit.log.1")).lines().count(), 2);
        assert!(read(&dir.join("audit.log.1")).starts_with('4'));
        assert!(read(&dir.join("audit.log.2")).starts_with('2'));
        assert!(!dir.join("audit.log.3").exists(), "at most max_files rotated files");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dir = scratch("queue");
        let config = AuditConfig {
            sink: AuditSink::File {
                path: dir.join("audit.log"),
                max_bytes: 1 << 20,
                max_files: 1,
            },
            buffer: 1,
            subject: SubjectMode::Plain,
        };
        let dropped = Counter::default();
        let audit = Audit::start(&config, dropped.clone()).expect("start").expect("on");
        let entry = || Entry {
            time: SystemTime::UNIX_EPOCH,
            api: "check",
            decision: "deny",
            reason: Some(Reason::MissingToken),
            trace_id: None,
            source: None,
            destination: None,
            delegated: None,
            cache: None,
            job: None,
        };
        for _ in 0..10_000 {
            audit.record(entry());
        }
        audit.shutdown(Duration::from_secs(5));
        let written = std::fs::read_to_string(dir.join("audit.log")).expect("read");
        let lines = written.lines().count() as u64;
        assert!(lines >= 1);
        assert_eq!(lines + dropped.get(), 10_000, "every record written or counted");
        let first: serde_json::Value = serde_json::from_str(written.lines().next().expect("a line")).expect("json");
        assert_eq!(first["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(first["reason"], "missing_token");
        assert_eq!(first["subject"], serde_json::Value::Null);
        audit.record(entry());
        assert_eq!(
            lines + dropped.get(),
            10_001,
            "after shutdown a record is counted as dropped"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
