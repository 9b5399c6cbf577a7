//! Load through the real Envoy, and the tally of what came back. A bounded number of clients send
//! requests in a closed loop until stopped; each answer is judged against what that request should
//! get (`Expect`) and counted, per phase of the scenario (set by the test as it injects a fault) and
//! per group of requests (e.g. cached users and new ones). Nothing waits unbounded: every request has
//! a deadline, and a request that passes it is a wrong answer (a hang).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::check::Delegation;
use crate::leaks;

/// A request past this is a hang: a wrong answer.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Issued tokens registered for the leak scans, per load (a sample: every token would make the scans
/// of a large run slow).
const REGISTERED_PER_LOAD: u64 = 200;

/// What one request under load must get.
#[derive(Clone, Debug)]
pub enum Expect {
    /// 200, and the upstream received one `Authorization: Bearer` with a live JWT (not the user's
    /// token) for `aud` on behalf of `sub` (from `issuer`, if given); or 503 with one of `unavailable`.
    Delegated {
        sub: String,
        aud: String,
        issuer: Option<String>,
        unavailable: &'static [&'static str],
    },
    /// Refused with `status` and one of `reasons`; never 200.
    Denied {
        status: u16,
        reasons: &'static [&'static str],
    },
}

/// One request: a GET through Envoy with this Host and the user's token.
#[derive(Clone, Debug)]
pub struct Job {
    /// Which tally of its phase it counts in.
    pub group: &'static str,
    pub host: String,
    pub path: String,
    pub token: Arc<str>,
    pub expect: Expect,
}

/// How one answer was judged.
#[derive(Debug)]
enum Outcome {
    Correct,
    /// 503 with an intended reason; whether it said when to come back (`Retry-After`).
    Unavailable {
        reason: String,
        retry_after: bool,
    },
    /// The intended refusal.
    Denied(String),
    /// No reply at all (connection refused or reset), while the scenario allows it.
    Refused,
    Wrong(String),
}

/// The counts of one phase and group, or a sum of them.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub correct: u64,
    /// 503 with an intended reason.
    pub unavailable: u64,
    /// Of those, the ones with a `Retry-After` (whole seconds; any other form is wrong).
    pub retry_after: u64,
    /// The intended refusal (`Expect::Denied`).
    pub denied: u64,
    /// No reply (the client could not connect, or the connection dropped), where allowed.
    pub refused: u64,
    pub wrong: u64,
    /// Intended 503s and refusals by reason code.
    pub reasons: BTreeMap<String, u64>,
    /// What the first wrong answers were (never a token).
    pub wrongs: Vec<String>,
    /// The longest wait for an intended 503, and for any answer.
    pub slowest_unavailable: Duration,
    pub slowest: Duration,
}

impl Tally {
    fn count(&mut self, outcome: Outcome, took: Duration) {
        self.sent += 1;
        self.slowest = self.slowest.max(took);
        match outcome {
            Outcome::Correct => self.correct += 1,
            Outcome::Unavailable { reason, retry_after } => {
                self.unavailable += 1;
                self.retry_after += u64::from(retry_after);
                self.slowest_unavailable = self.slowest_unavailable.max(took);
                *self.reasons.entry(reason).or_default() += 1;
            }
            Outcome::Denied(reason) => {
                self.denied += 1;
                *self.reasons.entry(reason).or_default() += 1;
            }
            Outcome::Refused => self.refused += 1,
            Outcome::Wrong(what) => {
                self.wrong += 1;
                if self.wrongs.len() < 10 {
                    self.wrongs.push(what);
                }
            }
        }
    }

    fn add(&mut self, other: &Self) {
        self.sent += other.sent;
        self.correct += other.correct;
        self.unavailable += other.unavailable;
        self.retry_after += other.retry_after;
        self.denied += other.denied;
        self.refused += other.refused;
        self.wrong += other.wrong;
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
        for w in &other.wrongs {
            if self.wrongs.len() < 10 {
                self.wrongs.push(w.clone());
            }
        }
        self.slowest_unavailable = self.slowest_unavailable.max(other.slowest_unavailable);
        self.slowest = self.slowest.max(other.slowest);
    }

    /// `sent=.. correct=.. 503=.. denied=.. refused=.. wrong=..`, then the reasons seen.
    pub fn counts(&self) -> String {
        let mut line = format!(
            "sent={} correct={} 503={} denied={} refused={} wrong={}",
            self.sent, self.correct, self.unavailable, self.denied, self.refused, self.wrong
        );
        if self.retry_after > 0 {
            let _ = write!(line, " retry-after={}", self.retry_after);
        }
        if !self.reasons.is_empty() {
            let reasons: Vec<String> = self.reasons.iter().map(|(r, n)| format!("{r}:{n}")).collect();
            let _ = write!(line, " ({})", reasons.join(" "));
        }
        line
    }

    /// Panic, saying what went wrong, unless every answer was right.
    pub fn assert_no_wrong(&self, scenario: &str) {
        assert_eq!(
            self.wrong, 0,
            "{scenario}: {} wrong answers of {}; the first: {:#?}",
            self.wrong, self.sent, self.wrongs
        );
    }
}

/// Every tally of a finished load, by phase (in the order the test set them) and group.
#[derive(Debug, Default)]
pub struct Tallies {
    pub phases: Vec<String>,
    pub by: BTreeMap<(String, &'static str), Tally>,
    pub elapsed: Duration,
}

impl Tallies {
    pub fn total(&self) -> Tally {
        self.sum(|_, _| true)
    }

    pub fn phase(&self, phase: &str) -> Tally {
        self.sum(|p, _| p == phase)
    }

    pub fn get(&self, phase: &str, group: &str) -> Tally {
        self.sum(|p, g| p == phase && g == group)
    }

    fn sum(&self, keep: impl Fn(&str, &str) -> bool) -> Tally {
        let mut sum = Tally::default();
        for ((phase, group), tally) in &self.by {
            if keep(phase, group) {
                sum.add(tally);
            }
        }
        sum
    }

    /// One line: the totals, then each phase's counts.
    pub fn report(&self, scenario: &str) -> String {
        let mut line = format!(
            "faults: {scenario}: {} in {:.1}s",
            self.total().counts(),
            self.elapsed.as_secs_f64()
        );
        for phase in &self.phases {
            let _ = write!(line, " | {phase}: {}", self.phase(phase).counts());
        }
        line
    }
}

/// The phase requests are counted in now, and whether a request may get no reply in it.
#[derive(Debug)]
struct Phase {
    name: String,
    refused_ok: bool,
}

/// Load running in the background; see the module comment.
#[derive(Debug)]
pub struct Load {
    phase: Arc<Mutex<Phase>>,
    phases: Arc<Mutex<Vec<String>>>,
    tallies: Arc<Mutex<BTreeMap<(String, &'static str), Tally>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl Load {
    /// `clients` clients, each sending `job(n)` (n counts every request of this load) to Envoy's
    /// listener on `port`, one after another with `pause` between, until `stop`.
    pub fn start<F>(port: u16, clients: usize, pause: Duration, first_phase: &str, job: F) -> Self
    where
        F: Fn(u64) -> Job + Send + Sync + 'static,
    {
        Self::spawn(port, clients, pause, first_phase, move |n| Some(job(n)))
    }

    /// `clients` clients sending each of `jobs` once, in order; `finish` waits for them.
    pub fn each(port: u16, clients: usize, first_phase: &str, jobs: Vec<Job>) -> Self {
        Self::spawn(port, clients, Duration::ZERO, first_phase, move |n| {
            usize::try_from(n).ok().and_then(|n| jobs.get(n).cloned())
        })
    }

    fn spawn<F>(port: u16, clients: usize, pause: Duration, first_phase: &str, job: F) -> Self
    where
        F: Fn(u64) -> Option<Job> + Send + Sync + 'static,
    {
        let load = Self {
            phase: Arc::new(Mutex::new(Phase {
                name: first_phase.to_owned(),
                refused_ok: false,
            })),
            phases: Arc::new(Mutex::new(vec![first_phase.to_owned()])),
            tallies: Arc::default(),
            stop: Arc::default(),
            tasks: Vec::new(),
            started: Instant::now(),
        };
        let http = reqwest::Client::builder()
            .timeout(REQUEST_DEADLINE)
            .pool_max_idle_per_host(clients)
            .build()
            .expect("http client");
        let job = Arc::new(job);
        let (next, registered) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let tasks = (0..clients)
            .map(|_| {
                let (http, job, next, registered) = (http.clone(), job.clone(), next.clone(), registered.clone());
                let (phase, tallies, stop) = (load.phase.clone(), load.tallies.clone(), load.stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let Some(job) = job(next.fetch_add(1, Ordering::Relaxed)) else {
                            break;
                        };
                        let (started_in, refused_ok_then) = {
                            let p = lock(&phase);
                            (p.name.clone(), p.refused_ok)
                        };
                        let started = Instant::now();
                        let answer = send(&http, port, &job).await;
                        let took = started.elapsed();
                        let refused_ok = refused_ok_then || lock(&phase).refused_ok;
                        let outcome = judge(&job, answer, refused_ok, &registered);
                        lock(&tallies)
                            .entry((started_in, job.group))
                            .or_default()
                            .count(outcome, took);
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect();
        Self { tasks, ..load }
    }

    /// Count the requests sent from now on under `name`.
    pub fn phase(&self, name: &str) {
        self.set(name, false);
    }

    /// Like `phase`, where a request may get no reply at all (the listener is down): counted as
    /// `refused`, not wrong.
    pub fn gap(&self, name: &str) {
        self.set(name, true);
    }

    fn set(&self, name: &str, refused_ok: bool) {
        *lock(&self.phase) = Phase {
            name: name.to_owned(),
            refused_ok,
        };
        let mut phases = lock(&self.phases);
        if !phases.iter().any(|p| p == name) {
            phases.push(name.to_owned());
        }
    }

    /// Stop the clients (each finishes its request, bounded by `REQUEST_DEADLINE`) and tally.
    pub async fn stop(self) -> Tallies {
        self.stop.store(true, Ordering::Relaxed);
        self.finish(REQUEST_DEADLINE + Duration::from_secs(2)).await
    }

    /// Wait (at most `within`) for the clients to run out of jobs, and tally.
    pub async fn finish(self, within: Duration) -> Tallies {
        let deadline = tokio::time::Instant::now() + within;
        for task in self.tasks {
            tokio::time::timeout_at(deadline, task)
                .await
                .unwrap_or_else(|_| panic!("the load did not finish within {within:?}"))
                .expect("a load client panicked");
        }
        Tallies {
            phases: lock(&self.phases).clone(),
            by: std::mem::take(&mut *lock(&self.tallies)),
            elapsed: self.started.elapsed(),
        }
    }
}

/// `clients` clients for `duration`, one phase: the total tally.
pub async fn load<F>(port: u16, clients: usize, duration: Duration, job: F) -> Tally
where
    F: Fn(u64) -> Job + Send + Sync + 'static,
{
    let load = Load::start(port, clients, Duration::ZERO, "load", job);
    tokio::time::sleep(duration).await;
    load.stop().await.total()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What came back: the status, the `Retry-After` if any, and the body (JSON, else the text as a
/// JSON string).
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

/// The answer, or why there was no reply.
async fn send(http: &reqwest::Client, port: u16, job: &Job) -> Result<Answer, reqwest::Error> {
    let response = http
        .get(format!("http://127.0.0.1:{port}{}", job.path))
        .header("host", &job.host)
        .header("authorization", format!("Bearer {}", job.token))
        .send()
        .await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let bytes = response.bytes().await?;
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

fn judge(job: &Job, answer: Result<Answer, reqwest::Error>, refused_ok: bool, registered: &AtomicU64) -> Outcome {
    let Answer {
        status,
        retry_after,
        body,
    } = match answer {
        Ok(answer) => answer,
        Err(e) if e.is_timeout() => return Outcome::Wrong(format!("no answer within {REQUEST_DEADLINE:?}")),
        Err(_) if refused_ok => return Outcome::Refused,
        Err(e) => return Outcome::Wrong(format!("no reply: {}", e.without_url())),
    };
    let reason = body["error"].as_str().unwrap_or("<no reason>").to_owned();
    // Retry-After is whole seconds, at least one (RFC 9110 10.2.3), and an open breaker always says it.
    match &retry_after {
        Some(v) if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v == "0" => {
            return Outcome::Wrong(format!("{status} {reason} with Retry-After {v:?}"));
        }
        None if reason == "token_service_circuit_open" => {
            return Outcome::Wrong(format!("{status} {reason} without Retry-After"));
        }
        _ => {}
    }
    match &job.expect {
        Expect::Delegated {
            sub,
            aud,
            issuer,
            unavailable,
        } => match status {
            200 => {
                let delegation = Delegation {
                    user_token: &job.token,
                    sub,
                    aud,
                    issuer: issuer.as_deref(),
                };
                match delegation.check(&body) {
                    Ok(token) => {
                        if registered.fetch_add(1, Ordering::Relaxed) < REGISTERED_PER_LOAD {
                            leaks::secret(token);
                        }
                        Outcome::Correct
                    }
                    Err(what) => Outcome::Wrong(format!("200 for {sub} -> {aud}: {what}")),
                }
            }
            503 if unavailable.contains(&reason.as_str()) => Outcome::Unavailable {
                reason,
                retry_after: retry_after.is_some(),
            },
            _ => Outcome::Wrong(format!("{status} {reason} for {sub} -> {aud}")),
        },
        Expect::Denied { status: want, reasons } => {
            if status == *want && reasons.contains(&reason.as_str()) {
                Outcome::Denied(reason)
            } else {
                Outcome::Wrong(format!("{status} {reason}, wanted {want} {reasons:?}"))
            }
        }
    }
}
